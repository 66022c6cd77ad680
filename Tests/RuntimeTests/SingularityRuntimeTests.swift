import LinuxSupport
import Testing
import TestSupport
@testable import Overlay
@testable import Runtime

/// The command line we build for Singularity/Apptainer. These tests check our side of the
/// interface only (the argv we hand over); no Singularity is installed to run it.
@Suite struct SingularityArgumentTests {
    let runtime = SingularityRuntime(executable: "/usr/bin/apptainer")

    func job(_ overlays: [String], container: ContainerReference = .sif("/images/base.sif"),
             binds: [Bind] = [], command: JobCommand, options: [String] = []) throws -> Job {
        Job(stack: try OverlayStack(arguments: overlays), container: container, binds: binds,
            command: command, workingDirectory: "/work", runtimeOptions: options)
    }

    @Test func commandFileWithStackBindsAndOptions() throws {
        let argv = runtime.arguments(for: try job(
            ["env.ext3", "data.ext3", "more.ext3:ro"],
            binds: [Bind(source: "/scratch", destination: "/scratch"),
                    Bind(source: "/data", destination: "/mnt", readOnly: true)],
            command: .file("job.txt"), options: ["--nv", "--contain"]))
        #expect(argv == ["/usr/bin/apptainer", "exec", "--nv", "--contain",
                         "--overlay", "env.ext3", "--overlay", "data.ext3:ro", "--overlay", "more.ext3:ro",
                         "-B", "/scratch", "-B", "/data:/mnt:ro",
                         "/images/base.sif", "/bin/bash", "job.txt"])
    }

    @Test func readOnlyFirstOverlayAndACommand() throws {
        let argv = runtime.arguments(for: try job(["env.ext3:ro"], container: .sandbox("./rootfs"),
                                                  command: .argv(["python", "-c", "print('hi there')"])))
        #expect(argv == ["/usr/bin/apptainer", "exec", "--overlay", "env.ext3:ro", "./rootfs",
                         "python", "-c", "print('hi there')"])
    }

    @Test func interactiveShellUsesShell() throws {
        let argv = runtime.arguments(for: try job(["env.ext3", "data.ext3"], command: .interactiveShell,
                                                  options: ["--fakeroot"]))
        #expect(argv == ["/usr/bin/apptainer", "shell", "--fakeroot", "--overlay", "env.ext3",
                         "--overlay", "data.ext3:ro", "/images/base.sif"])
    }

    @Test func nameIsTheProgramsOwn() {
        #expect(SingularityRuntime(executable: "/opt/bin/singularity").name == "singularity")
        #expect(runtime.name == "apptainer")
    }
}

@Suite struct ShellQuoteTests {
    @Test func plainWordsStayPlain() {
        #expect(ShellQuote.line(["/usr/bin/apptainer", "exec", "--overlay", "a.ext3:ro", "-B", "/d:/m:ro", "x=1", "a,b@c%d+e"])
                == "/usr/bin/apptainer exec --overlay a.ext3:ro -B /d:/m:ro x=1 a,b@c%d+e")
    }

    @Test func specialWordsAreQuoted() {
        #expect(ShellQuote.quote("") == "''")
        #expect(ShellQuote.quote("a b") == "'a b'")
        #expect(ShellQuote.quote("it's") == "'it'\\''s'")
        #expect(ShellQuote.quote("$HOME") == "'$HOME'")
        #expect(ShellQuote.quote("=x") == "'=x'")
        #expect(ShellQuote.quote("a\nb") == "$'a\\nb'")
    }

    /// bash itself reads the line back: the words must come out exactly as they went in.
    @Test(.requires(executable: "bash"))
    func bashReadsTheLineBackAsTheSameWords() throws {
        let words = ["plain", "", "two words", "it's", "\"double\"", "$HOME", "`date`", "back\\slash",
                     "glob*?[x]", "semi;colon|pipe&", "~tilde", "new\nline", "tab\there", "quote'\nmix",
                     "#hash", "=eq", "ünïcødé", "(paren)", "{a,b}", "!bang"]
        let result = try run(["bash", "-c", "printf '%s\\0' " + ShellQuote.line(words)])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout.split(separator: "\0", omittingEmptySubsequences: false).dropLast().map(String.init) == words)
    }
}

/// `--snapshot` on the Apptainer command line: the snapshot is a `:ro` overlay, writes go to
/// a tmpfs thrown away at the end, and the working directory it shows is not bound live.
@Suite struct SingularitySnapshotArgumentTests {
    @Test func aSnapshotIsReadOnlyWithScratchAndNoLiveWorkingDirectory() throws {
        var job = Job(stack: try OverlayStack(arguments: ["/store/inputs.ext3:ro"]), container: .sif("/images/base.sif"),
                      binds: [Bind(source: "/work/results", destination: "/work/results")],
                      command: .argv(["python", "train.py"]), workingDirectory: "/work")
        job.frozenPaths = ["/work"]
        job.scratch = true
        let argv = SingularityRuntime(executable: "/usr/bin/apptainer").arguments(for: job)
        #expect(argv == ["/usr/bin/apptainer", "exec", "--overlay", "/store/inputs.ext3:ro", "--writable-tmpfs",
                         "--no-mount", "cwd", "-B", "/work/results", "/images/base.sif", "python", "train.py"])
    }

    @Test func withAWritableOverlayThereIsNoScratch() throws {
        var job = Job(stack: try OverlayStack(arguments: ["scratch.ext3", "/store/inputs.ext3:ro"]), container: .sif("/images/base.sif"),
                      command: .argv(["true"]), workingDirectory: "/elsewhere")
        job.frozenPaths = ["/work"]
        job.scratch = false
        let argv = SingularityRuntime(executable: "/usr/bin/apptainer").arguments(for: job)
        #expect(argv == ["/usr/bin/apptainer", "exec", "--overlay", "scratch.ext3", "--overlay", "/store/inputs.ext3:ro",
                         "/images/base.sif", "true"])
    }
}
