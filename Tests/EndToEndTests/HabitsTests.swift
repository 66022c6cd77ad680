import Foundation
import Testing
import TestSupport

/// What users bring from Apptainer and from other tools, and the messages they meet: each
/// refusal is one line starting with `error:`, names the thing and what to do, and leaves
/// nothing behind.
@Suite struct HabitsTests {
    /// Runs `argv` (argv[0] one of ours) in `directory`.
    func ours(_ argv: [String], in directory: TempDirectory, environment: [String: String]? = nil) throws -> ProcessResult {
        try run([product(argv[0])] + argv.dropFirst(), environment: environment, currentDirectory: directory.path)
    }

    /// One `error:` line, the status, and nothing on stdout.
    func expectRefusal(_ result: ProcessResult, _ line: String, status: Int32 = 64,
                       sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == status, "\(result)", sourceLocation: sourceLocation)
        #expect(result.stderr == "error: " + line + "\n", "\(result)", sourceLocation: sourceLocation)
        #expect(result.stdout.isEmpty, "\(result)", sourceLocation: sourceLocation)
    }

    @Test(arguments: [
        (["create-overlay", "--bogus"], "Unknown option '--bogus' (see create-overlay --help)"),
        (["run-overlay", "-o", "a.ext3", "--bogus"], "Unknown option '--bogus' (see run-overlay --help)"),
        (["create-overlay", "-s", "-5"],
         "-s -5: a size cannot be negative; give a positive number of MiB such as 500, or with a unit: 500M, 5G"),
        (["create-overlay", "-s", "64", "-n", "-5"],
         "-n -5: a file count cannot be negative; give a positive number of thousands of files, e.g. -n 700 for 700,000"),
        (["create-overlay", "-s", "1.5G"], "-s 1.5G: give a whole number of MiB: use 1536M"),
        (["create-overlay", "-s", "16T"],
         "16 TiB is too large for ext3: with 4 KiB blocks it holds 4 KiB less than 16 TiB, at most -s 16777215 (16 TiB less 1 MiB)"),
        (["overlay", "inf", "env.ext3"],
         "overlay inf: no such command; did you mean overlay info? (commands: info, ls, cat, check, resize, config, snapshot, jobs, doctor, checkpoint, version)"),
        (["overlay", "frobnicate"],
         "overlay frobnicate: no such command; give one of info, ls, cat, check, resize, config, snapshot, jobs, doctor, checkpoint, version (see overlay --help)"),
        (["run-overlay", "-o", "x.ext3:ro", "image.sif", "cmd"],
         "'image.sif': give the container with -c (-c image.sif), and a command after --, e.g. run-overlay -o IMAGE:ro -c image.sif -- COMMAND"),
        (["run-overlay", "-o", "x.ext3", "python", "--", "train.py"],
         "'python': put the command after -- (run-overlay -o IMAGE -- python ...), or give a command file with -f"),
        (["mount-overlay", "-o", "x.ext3", "image.sif"], "'image.sif': give the container with -c: mount-overlay -o IMAGE -c image.sif"),
        (["mount-overlay", "-o", "x.ext3", "python"],
         "'python': mount-overlay takes no command (it opens a shell); to run one, use run-overlay -o IMAGE -- python ..."),
        (["create-overlay", "-s", "64", "-o", "a.ext3", "b.ext3"],
         "the image path is given twice (-o a.ext3 and b.ext3): give it once, with -o or last"),
    ])
    func usageMistakesAreNamed(_ argv: [String], _ line: String) throws {
        let directory = try TempDirectory("habits")
        expectRefusal(try ours(argv, in: directory), line)
        #expect(try directory.listing() == [])
    }

    @Test func sizesAreMiBAndTheDefaultNameSaysSo() throws {
        let directory = try TempDirectory("habits-name")
        let gigabytes = try ours(["create-overlay", "-s", "5G", "-n", "3200"], in: directory)
        #expect(gigabytes.status == 0, "\(gigabytes)")
        #expect(gigabytes.stdout.hasPrefix("overlay-5120M-3200K.ext3: 5 GiB, 3,200,"), "\(gigabytes)")
        // GB is the same binary unit: 5 x 1024 MiB.
        let spelled = try ours(["create-overlay", "-s", "5GB", "-n", "3200", "-o", "gb.ext3", "--json"], in: directory)
        #expect(spelled.stdout.contains("\"sizeBytes\":5368709120"), "\(spelled)")
        // Without -n, the thousands of files the image got.
        let plain = try ours(["create-overlay", "-s", "64"], in: directory)
        #expect(plain.stdout.hasPrefix("overlay-64M-4K.ext3: 64 MiB, 4,096 files"), "\(plain)")
        #expect(try directory.listing().sorted() == ["gb.ext3", "overlay-5120M-3200K.ext3", "overlay-64M-4K.ext3"])
        // A short create prints no progress where stderr is no terminal.
        #expect(gigabytes.stderr.isEmpty && plain.stderr.isEmpty)
    }

    @Test func apptainerOverlayCreateHabits() throws {
        let directory = try TempDirectory("habits-create")
        // apptainer overlay create --fakeroot --sparse --size 64 my.img
        // Under sudo upper/ would go to the user who ran it, without --fakeroot to that user.
        let result = try ours(["create-overlay", "-f", "-S", "-s", "64", "my.img"], in: directory,
                              environment: ["PATH": "/usr/bin:/bin", "SUDO_UID": "4321", "SUDO_GID": "4321"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout.hasPrefix("my.img: 64 MiB"), "\(result)")
        #expect(result.stderr == "note: images are always sparse (they take disk space only as files are written); -S/--sparse changes nothing\n")
        let upper = try run(["debugfs", "-R", "stat /upper", directory.file("my.img")])
        #expect(upper.stdout.contains("User:     0   Group:     0"), "\(upper)")
    }

    @Test func anExistingDirectoryOrDeviceIsNotToBeRemoved() throws {
        let directory = try TempDirectory("habits-exists")
        try FileManager.default.createDirectory(atPath: directory.file("envs"), withIntermediateDirectories: false)
        expectRefusal(try ours(["create-overlay", "-s", "64", "-o", "envs"], in: directory),
                      "envs is a directory: give the image's file name, e.g. -o envs/env.ext3", status: 1)
        expectRefusal(try ours(["create-overlay", "-s", "64", "-o", "/dev/null"], in: directory),
                      "/dev/null is a device, not a file: choose the image's file name with -o", status: 1)
        #expect(try directory.listing() == ["envs"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.file("envs")).isEmpty)
    }

    @Test func theOutputNameIsCheckedBeforeTheTreeIsRead() throws {
        let directory = try TempDirectory("habits-early")
        FileManager.default.createFile(atPath: directory.file("env.ext3"), contents: Data("mine".utf8))
        // The source does not exist: a scan first would say so; the name is checked first.
        expectRefusal(try ours(["create-overlay", "--from", "env/", "--to", "/opt/env"], in: directory),
                      "env.ext3 already exists; choose another name with -o or remove it first", status: 1)
        #expect(try String(contentsOfFile: directory.file("env.ext3"), encoding: .utf8) == "mine")
    }

    @Test func theSizingLineAndTheResultLineCountAlike() throws {
        let directory = try TempDirectory("habits-counts")
        let tree = directory.file("env")
        try FileManager.default.createDirectory(atPath: tree + "/lib/sub", withIntermediateDirectories: true)
        for i in 0..<25 {
            FileManager.default.createFile(atPath: "\(tree)/lib/sub/f\(i)", contents: Data(repeating: 7, count: 3000 + i))
        }
        try FileManager.default.createSymbolicLink(atPath: tree + "/link", withDestinationPath: "lib")
        let result = try ours(["create-overlay", "--from", "env", "--to", "/opt/env"], in: directory)
        #expect(result.status == 0, "\(result)")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 3, "\(result)")
        // sized from the tree: ... (env: 25 files, 74.3 KiB; ...)  /  env.ext3: packed 25 files (74.3 KiB) from env
        let sizing = try #require(lines.first)
        let packed = try #require(lines.dropFirst().first)
        let bytes = "73.5"  // 25 x 3,000 + (0 + 1 + ... + 24) = 75,300 bytes
        #expect(sizing.contains("(env: 25 files, \(bytes) KiB;"), "\(sizing)")
        #expect(packed == "env.ext3: packed 25 files (\(bytes) KiB) from env", "\(packed)")
    }

    @Test func overlaysWrittenAsApptainerAcceptsOrNotGetAHint() throws {
        let directory = try TempDirectory("habits-spec")
        expectRefusal(try ours(["run-overlay", "--runtime", "native", "-o", "a.ext3:RO", "--", "true"], in: directory),
                      "overlay 'a.ext3:RO' not found: write the mode in lower case: -o a.ext3:ro", status: 1)
        expectRefusal(try ours(["run-overlay", "--runtime", "native", "-o", "a.ext3,b.ext3", "--", "true"], in: directory),
                      "overlay 'a.ext3,b.ext3' not found: give each overlay its own -o: -o a.ext3 -o b.ext3:ro", status: 1)
    }

    @Test func aMissingApptainerIsNamed() throws {
        let directory = try TempDirectory("habits-apptainer")
        let empty = directory.file("bin")
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: false)
        expectRefusal(try ours(["run-overlay", "--runtime", "apptainer", "-o", "a.ext3", "--", "true"], in: directory,
                               environment: ["PATH": empty, "HOME": directory.path]),
                      "Apptainer is missing: no apptainer on PATH; install it (or load its module), or use --runtime native", status: 1)
    }

    @Test func mountOverlayWithoutATerminalPointsToRunOverlay() throws {
        let directory = try TempDirectory("habits-tty")
        expectRefusal(try ours(["mount-overlay", "--runtime", "native", "-o", "env.ext3"], in: directory),
                      "mount-overlay needs a terminal: it opens an interactive shell; in a batch job (sbatch) or a script use run-overlay -o IMAGE -f FILE, or run-overlay -o IMAGE -- COMMAND",
                      status: 1)
    }

    @Test(arguments: [
        ("--nv", "--nv is not supported by the native runtime: it does not set up GPUs; run with --runtime apptainer where Apptainer is installed"),
        ("--rocm", "--rocm is not supported by the native runtime: it does not set up GPUs; run with --runtime apptainer where Apptainer is installed"),
        ("--cleanenv", "--cleanenv is not supported by the native runtime: it always binds /sys, /dev, /tmp, $HOME and the working directory and keeps your environment; use --runtime apptainer for --cleanenv"),
        ("--writable-tmpfs", "--writable-tmpfs is not supported by the native runtime: give a writable overlay as the first -o instead: it keeps what the job writes"),
        ("--pwd=/opt", "--pwd is not supported by the native runtime: the job starts in the directory you run it from (bound in): cd there first, or use --runtime apptainer"),
    ])
    func apptainerOptionsTheNativeRuntimeRefuses(_ option: String, _ line: String) throws {
        let directory = try TempDirectory("habits-native")
        try FixtureImage.ext3(at: directory.file("env.ext3"), mebibytes: 16)
        expectRefusal(try ours(["run-overlay", "--runtime", "native", option, "-o", "env.ext3", "--", "true"], in: directory),
                      line, status: 1)
    }

    @Test func apptainerOptionsArePassedToApptainer() throws {
        let scene = try SingularityScene()
        try scene.overlay("env.ext3")
        let sif = try scene.sif("base.sif")
        let result = try scene.run("run-overlay", ["--nv", "--rocm", "--cleanenv", "--pwd", "/opt/app", "--writable-tmpfs",
                                                   "-o", "env.ext3:ro", "-c", sif, "--", "python", "x.py"])
        #expect(result.status == 0, "\(result)")
        #expect(scene.standIn.arguments() == ["exec", "--nv", "--rocm", "--cleanenv", "--pwd", "/opt/app", "--writable-tmpfs",
                                              "--overlay", "env.ext3:ro", sif, "python", "x.py"])
    }

    @Test func theSharingLineQuotesThePath() throws {
        let directory = try TempDirectory("habits-share")
        try FixtureImage.ext3(at: directory.file("my env.ext3"), mebibytes: 16)
        chmod(directory.file("my env.ext3"), 0o644)
        chmod(directory.path, 0o755)
        let result = try ours(["overlay", "info", "my env.ext3"], in: directory)
        #expect(result.status == 0, "\(result)")
        let sharing = result.stdout.split(separator: "\n").first { $0.hasPrefix("sharing:") }
        #expect(sharing?.hasSuffix("others can mount it read-only now (--overlay 'my env.ext3:ro')") == true, "\(result)")
    }
}
