import LinuxSupport

// The executable lookup and the environment are LinuxSupport's; the modules above Overlay see
// them through it.
@_exported import func LinuxSupport.findExecutable
@_exported import func LinuxSupport.isExecutableFile
@_exported import func LinuxSupport.currentEnvironment

/// Runs a helper program (e2fsck, resize2fs) to completion (``ProgramRunner``), its stdout and
/// stderr collected together. Looked up on PATH, then in /usr/sbin and /sbin (where e2fsprogs
/// lives, often off an ordinary user's PATH).
public enum Program {
    public typealias Result = ProgramRunner.Result

    /// Runs `arguments` (the first names the program) and waits for it.
    public static func run(_ arguments: [String]) throws -> Result {
        guard let executable = findExecutable(arguments[0], alsoIn: ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]) else {
            throw OverlayError.message("\(arguments[0]) not found: install e2fsprogs (Debian: apt-get install e2fsprogs)")
        }
        do {
            return try ProgramRunner.run(executable, [executable] + arguments.dropFirst())
        } catch {
            // Before the program could be started: no pipe, or posix_spawn failed.
            throw OverlayError.message("cannot run \(error.operation == "pipe" ? arguments[0] : executable): \(error.errno)")
        }
    }
}
