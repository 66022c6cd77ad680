import Foundation
import Testing
import TestSupport

/// run-overlay and mount-overlay driving Singularity/Apptainer, as built executables. A
/// stand-in `apptainer`/`singularity` records what it is given: these tests check our side of
/// the interface only (the exact argv, the checks and lock tests before it, exec, the exit
/// status), not Singularity itself, which cannot be installed here.
@Suite("Singularity command line (our side of the interface only)",
       .requires(executable: "mke2fs"), .requires(executable: "debugfs"))
struct SingularityCommandLineTests {
    @Test func commandFileArgvIsWhatApptainerExpects() throws {
        let scene = try SingularityScene()
        try scene.overlay("env.ext3")
        try scene.overlay("data.ext3")
        try scene.overlay("more.ext3")
        let sif = try scene.sif("base.sif")
        try "echo hello\n".write(toFile: scene.file("job.txt"), atomically: true, encoding: .utf8)
        let result = try scene.run("run-overlay", [
            "-o", "env.ext3", "-o", "data.ext3", "-o", "more.ext3:ro", "-c", sif,
            "-B", "/scratch", "-B", "/data:/mnt:ro",
            "--runtime-option=--nv", "--runtime-option", "--contain", "-f", "job.txt"])
        #expect(result.status == 0, "\(result)")
        #expect(scene.standIn.arguments() == [
            "exec", "--nv", "--contain",
            "--overlay", "env.ext3", "--overlay", "data.ext3:ro", "--overlay", "more.ext3:ro",
            "-B", "/scratch", "-B", "/data:/mnt:ro",
            sif, "/bin/bash", "job.txt"])
    }

    @Test func commandAfterDashDashKeepsItsWordsAndAURIIsPassedAsGiven() throws {
        let scene = try SingularityScene()
        try scene.overlay("env.ext3")
        let result = try scene.run("run-overlay", [
            "-o", "env.ext3:ro", "-c", "docker://ubuntu:22.04", "--", "python3", "-c", "print('a b')", ""])
        #expect(result.status == 0, "\(result)")
        #expect(scene.standIn.arguments() == [
            "exec", "--overlay", "env.ext3:ro", "docker://ubuntu:22.04", "python3", "-c", "print('a b')", ""])
    }

    @Test func apptainerIsPreferredWhenBothAreOnPath() throws {
        let scene = try SingularityScene(standIns: ["singularity", "apptainer"])
        try scene.overlay("env.ext3")
        let result = try scene.run("run-overlay", ["-o", "env.ext3", "-c", "docker://alpine", "--", "true"])
        #expect(result.status == 0, "\(result)")
        #expect(scene.standIn.arguments("apptainer") != nil)
        #expect(scene.standIn.arguments("singularity") == nil)

        // Asking for singularity by name gets it, even with apptainer there.
        let named = try scene.run("run-overlay", ["--runtime", "singularity", "-o", "env.ext3", "-c", "docker://alpine", "--", "true"])
        #expect(named.status == 0, "\(named)")
        #expect(scene.standIn.arguments("singularity") == ["exec", "--overlay", "env.ext3", "docker://alpine", "true"])
    }

    @Test func singularityAloneIsUsed() throws {
        let scene = try SingularityScene(standIns: ["singularity"])
        try scene.overlay("env.ext3")
        let result = try scene.run("run-overlay", ["-o", "env.ext3", "-c", "docker://alpine", "--", "true"])
        #expect(result.status == 0, "\(result)")
        #expect(scene.standIn.arguments("singularity") == ["exec", "--overlay", "env.ext3", "docker://alpine", "true"])
    }

    @Test func mountOverlayOpensAShell() throws {
        let scene = try SingularityScene()
        try scene.overlay("env.ext3")
        try scene.overlay("data.ext3")
        let sif = try scene.sif("base.sif")
        let result = try scene.runOnTerminal("mount-overlay", ["-o", "env.ext3", "-o", "data.ext3", "-c", sif, "--runtime-option=--fakeroot"])
        #expect(result.status == 0, "\(result)")
        #expect(scene.standIn.arguments() == ["shell", "--fakeroot", "--overlay", "env.ext3", "--overlay", "data.ext3:ro", sif])
    }

    @Test func dryRunPrintsTheQuotedCommandAndStartsNothing() throws {
        let scene = try SingularityScene()
        try scene.overlay("env.ext3")
        try scene.overlay("data.ext3")
        let result = try scene.run("run-overlay", [
            "--dry-run", "-o", "env.ext3", "-o", "data.ext3", "-c", "docker://ubuntu", "-B", "/a b:/c",
            "--", "sh", "-c", "echo it's $HOME"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "\(scene.standIn.path)/apptainer exec --overlay env.ext3 --overlay data.ext3:ro -B '/a b:/c' docker://ubuntu sh -c 'echo it'\\''s $HOME'\n")
        #expect(!scene.standIn.started)
        // The printed line, run by a shell, gives the stand-in exactly those words.
        let replay = try TestSupport.run(["/bin/sh", "-c", result.stdout], environment: scene.environment(),
                                         currentDirectory: scene.directory.path)
        #expect(replay.status == 0, "\(replay)")
        #expect(scene.standIn.arguments() == ["exec", "--overlay", "env.ext3", "--overlay", "data.ext3:ro",
                                              "-B", "/a b:/c", "docker://ubuntu", "sh", "-c", "echo it's $HOME"])
    }

    @Test func exitStatusPassesThroughAndTheProcessIsReplaced() throws {
        let scene = try SingularityScene()
        try scene.overlay("env.ext3")
        // The shell records its pid, then execs run-overlay: if run-overlay execs Singularity in
        // turn, the stand-in has that same pid.
        let result = try TestSupport.run(
            ["/bin/sh", "-c", "echo $$ > shell.pid; exec \"$0\" \"$@\"", product("run-overlay"),
             "-o", "env.ext3", "-c", "docker://alpine", "--", "false"],
            environment: scene.environment(["STANDIN_STATUS": "7"]), currentDirectory: scene.directory.path)
        #expect(result.status == 7, "\(result)")
        let shellPid = try String(contentsOfFile: scene.file("shell.pid"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(scene.standIn.pid().map(String.init) == shellPid)
    }

    @Test func apptainerAndSingularityVariablesPassUntouched() throws {
        let scene = try SingularityScene()
        try scene.overlay("env.ext3")
        let result = try scene.run("run-overlay", ["-o", "env.ext3", "-c", "docker://alpine", "--", "true"],
                                   environment: ["APPTAINER_BINDPATH": "/scratch,/data:/mnt",
                                                 "SINGULARITY_CACHEDIR": "/tmp/my cache",
                                                 "APPTAINERENV_FOO": "bar baz"])
        #expect(result.status == 0, "\(result)")
        #expect(scene.standIn.environment() == ["APPTAINERENV_FOO=bar baz", "APPTAINER_BINDPATH=/scratch,/data:/mnt",
                                                "SINGULARITY_CACHEDIR=/tmp/my cache"])
    }

    @Test func noContainerAnywhereIsOneClearError() throws {
        let scene = try SingularityScene()
        try scene.overlay("env.ext3")
        let result = try scene.run("run-overlay", ["-o", "env.ext3", "--", "true"])
        #expect(result.status == 1, "\(result)")
        #expect(result.stderr == "error: Singularity needs a container image: give -c IMAGE or set container in ~/.config/overlay/config\n")
        #expect(!scene.standIn.started)
    }

    @Test func anImageApptainerWouldRefuseIsRefusedFirst() throws {
        let scene = try SingularityScene()
        try FixtureImage.mkfs(scene.file("new.ext4"), mebibytes: 16, type: "ext4")
        try FixtureImage.ext3(at: scene.file("bare.ext3"), mebibytes: 16, layout: false)
        let ext4 = try scene.run("run-overlay", ["-o", "new.ext4", "-c", "docker://alpine", "--", "true"])
        #expect(ext4.status == 1, "\(ext4)")
        #expect(ext4.stderr.contains("overlay 'new.ext4' cannot be used"), "\(ext4)")
        #expect(ext4.stderr.contains("extent"), "\(ext4)")
        let bare = try scene.run("run-overlay", ["-o", "bare.ext3", "-c", "docker://alpine", "--", "true"])
        #expect(bare.status == 1, "\(bare)")
        #expect(bare.stderr.contains("has no upper/ and work/ directory"), "\(bare)")
        let missing = try scene.run("run-overlay", ["-o", "none.ext3:ro", "-c", "docker://alpine", "--", "true"])
        #expect(missing.status == 1, "\(missing)")
        #expect(missing.stderr.contains("overlay 'none.ext3' not found"), "\(missing)")
        #expect(!scene.standIn.started)
    }
}

/// OFD locks as Apptainer takes them, held by another process: run-overlay tests them before
/// it hands over and never starts Singularity on an image that is in use.
@Suite("Singularity and image locks (our side of the interface only)",
       .requires(executable: "mke2fs"), .requires(executable: "debugfs"), .requires(executable: "python3"))
struct SingularityLockTests {
    @Test func anImageHeldForWritingIsRefusedWithoutStartingSingularity() throws {
        let scene = try SingularityScene()
        let image = try scene.overlay("env.ext3")
        let holder = try LockHolder(image, write: true)
        defer { holder.release() }
        for overlay in ["env.ext3", "env.ext3:ro"] {
            let result = try scene.run("run-overlay", ["-o", overlay, "-c", "docker://alpine", "--", "true"])
            #expect(result.status == 1, "\(result)")
            #expect(result.stderr == "error: env.ext3 is in use: another job has it mounted writable; wait for it to finish (nobody can mount it until then)\n")
        }
        #expect(!scene.standIn.started)
    }

    @Test func aReadLockAllowsReadOnlyUseOnly() throws {
        let scene = try SingularityScene()
        let image = try scene.overlay("env.ext3")
        let holder = try LockHolder(image, write: false)
        defer { holder.release() }
        let writable = try scene.run("run-overlay", ["-o", "env.ext3", "-c", "docker://alpine", "--", "true"])
        #expect(writable.status == 1, "\(writable)")
        #expect(writable.stderr.contains("env.ext3 is in use: other jobs have it mounted read-only"), "\(writable)")
        #expect(!scene.standIn.started)

        let readOnly = try scene.run("run-overlay", ["-o", "env.ext3:ro", "-c", "docker://alpine", "--", "true"])
        #expect(readOnly.status == 0, "\(readOnly)")
        #expect(scene.standIn.arguments() == ["exec", "--overlay", "env.ext3:ro", "docker://alpine", "true"])
    }

    @Test func theLockIsOnlyTestedSoApptainerCanTakeItAfterUs() throws {
        let scene = try SingularityScene()
        let image = try scene.overlay("env.ext3")
        // The stand-in, once started by exec, takes the write lock the way Apptainer would:
        // it only can if nothing of run-overlay's test lock (nor a descriptor holding it)
        // survives into the exec'd process.
        let result = try scene.run("run-overlay", [
            "-o", "env.ext3", "-c", "docker://alpine", "--",
            python3, "-c",
            "import fcntl, os, struct; fd = os.open('\(image)', os.O_RDWR); fcntl.fcntl(fd, 37, struct.pack('hhqqii', fcntl.F_WRLCK, 0, 0, 0, 0, 0)); print('locked')"],
            environment: ["STANDIN_RUN": "1"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "locked\n")
    }
}
