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

/// Bad command lines get one line on stderr, never the usage dump, and exit 64 (EX_USAGE).
@Suite struct UsageErrorTests {
    @Test(arguments: [
        (["create-overlay", "-s", "64", "--bogus"], "error: Unknown option '--bogus' (see create-overlay --help)"),
        (["run-overlay", "-o", "a.ext3", "-o", "b.ext3:rw", "--", "true"],
         "error: b.ext3: only the first overlay may be writable; add ':ro' to it (e.g. -o b.ext3:ro)"),
        (["run-overlay", "-o", "a.ext3"], "error: nothing to run: give a command file with -f FILE, or a command after --"),
        (["mount-overlay", "--runtime", "bogus", "-o", "a.ext3"],
         "error: unknown runtime 'bogus': use auto, native, singularity or apptainer"),
        (["overlay", "cat", "a.ext3"], "error: Missing expected argument '<path>' (see overlay --help)"),
    ])
    func oneLineAndUsageStatus(_ argv: [String], _ line: String) throws {
        let result = try run([product(argv[0])] + argv.dropFirst())
        #expect(result.status == 64, "\(result)")
        #expect(result.stderr == line + "\n", "\(result)")
        #expect(result.stdout.isEmpty)
    }
}
