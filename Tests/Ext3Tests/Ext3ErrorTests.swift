import Testing
@testable import Ext3

@Suite struct Ext3ErrorTests {
    @Test func libraryErrorsCarryOperationAndMessage() throws {
        let error = #expect(throws: Ext3.Error.self) {
            _ = try FileSystemHandle(path: "/nonexistent/image.ext3", writable: false)
        }
        let text = error?.description ?? ""
        #expect(text.contains("/nonexistent/image.ext3"))
        #expect(text.contains("open filesystem"))
        #expect(text.contains("No such file or directory"))
    }
}
