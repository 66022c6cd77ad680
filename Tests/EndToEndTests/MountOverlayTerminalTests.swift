import Foundation
import Testing
import TestSupport

/// mount-overlay's shell on a terminal (script(1) gives it one): whichever shell the user has,
/// its exit status is mount-overlay's, it says nothing about the terminal on its way out, and
/// the terminal's foreground is the caller's again afterwards.
@Suite("mount-overlay on a terminal", .serialized, .requiresRoot,
       .requires(executable: "script", "bsdutils: a terminal for the interactive shell"),
       .requires(executable: "ps", "procps: the terminal's foreground group"))
struct MountOverlayTerminalTests {
    @Test(arguments: ["/bin/sh", "/bin/bash"])
    func theShellsStatusIsTheToolsAndTheTerminalComesBack(shell: String) throws {
        let scene = try NativeScene()
        let image = try scene.overlay("work.ext3")
        let command = [product("mount-overlay"), "--runtime", "native", "-o", image].map { "'" + $0 + "'" }.joined(separator: " ")
        // script's shell runs mount-overlay, then says whether its own group leads the terminal.
        let outer = command + "; echo status=$?; "
            + "if [ \"$(ps -o tpgid= -p $$ | tr -d ' ')\" = \"$(ps -o pgid= -p $$ | tr -d ' ')\" ]; then echo terminal=back; else echo terminal=elsewhere; fi"
        let session = try SpawnedProcess(["script", "-qec", outer, "/dev/null"],
                                         environment: scene.environment(["SHELL": shell]),
                                         currentDirectory: scene.directory.path, stdin: .pipe)
        defer { session.signal(SIGKILL); _ = session.wait(timeout: 10) }
        session.write("echo in-the-shell; exit 3\n")
        let result = session.wait(timeout: 60)
        #expect(result.stdout.contains("status=3"), "\(result)")
        #expect(result.stdout.contains("terminal=back"), "\(result)")
        #expect(!result.stdout.contains("Cannot set tty process group") && !result.stderr.contains("process group"), "\(result)")
        #expect(try FixtureImage.isClean(image))
    }
}
