import Testing
import TestSupport

@Suite struct HelpTests {
    @Test(arguments: ["create-overlay", "mount-overlay", "run-overlay", "overlay"])
    func everyExecutableAnswersHelp(_ name: String) throws {
        let result = try run([product(name), "--help"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout.contains("USAGE"))
    }
}
