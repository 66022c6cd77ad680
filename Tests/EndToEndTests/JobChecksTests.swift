import Foundation
import Testing
import TestSupport

/// What run-overlay refuses before it mounts anything, the same way as root and as an ordinary
/// user: one line, exit status 1, no mount, loop device or process left, the images untouched.
@Suite(.requiresRoot, .requires(executable: "mke2fs"), .requires(executable: "debugfs"))
struct JobChecksTests {
    @Test func theSameImageTwiceIsSaidPlainlyAsRootAndAsAUser() throws {
        let scene = try NativeScene()
        let user = try TestUser.ensure()
        let image = try scene.userOverlay("a.ext3", for: user)
        symlink(image, scene.file("alias.ext3"))
        link(image, scene.file("hard.ext3"))
        let before = try Data(contentsOf: URL(fileURLWithPath: image))
        let cases: [([String], String)] = [
            (["-o", "a.ext3", "-o", "a.ext3"], "'a.ext3' is given twice"),
            (["-o", "a.ext3:ro", "-o", "a.ext3:ro"], "'a.ext3' is given twice"),
            (["-o", "a.ext3:ro", "-o", "alias.ext3"], "'a.ext3' and 'alias.ext3' are the same image file"),
            (["-o", "hard.ext3", "-o", "a.ext3:ro"], "'hard.ext3' and 'a.ext3' are the same image file"),
        ]
        for (arguments, message) in cases {
            let asRoot = try scene.run("run-overlay", arguments + ["--", "true"])
            let asUser = try user.run([product("run-overlay"), "--runtime", "native"] + arguments + ["--", "true"],
                                      currentDirectory: scene.directory.path, environment: scene.configIsolation)
            for result in [asRoot, asUser] {
                #expect(result.status == 1, "\(arguments): \(result)")
                #expect(result.stderr.contains(message), "\(arguments): \(result.stderr)")
                #expect(result.stderr.contains("an image can be in a stack only once"), "\(result.stderr)")
                #expect(result.stderr.split(separator: "\n").count == 1, "\(arguments): \(result.stderr)")
            }
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: image)) == before)
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }

    @Test func aCommandFileThatIsNoScriptIsRefusedBeforeBashSeesIt() throws {
        let scene = try NativeScene()
        try scene.overlay("env.ext3")
        try FileManager.default.createDirectory(atPath: scene.file("jobs"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: "/bin/true", toPath: scene.file("program"))
        try "echo unreadable\n".write(toFile: scene.file("secret.txt"), atomically: true, encoding: .utf8)
        chmod(scene.file("secret.txt"), 0o000)
        chmod(scene.directory.path, 0o755)
        let user = try TestUser.ensure()
        let before = try scene.directory.listing()
        let cases: [(String, String)] = [
            ("jobs", "command file 'jobs' is a directory"),
            ("program", "command file 'program' is a binary file, not a text file of commands"),
        ]
        for (file, message) in cases {
            let result = try scene.run("run-overlay", ["-o", "env.ext3:ro", "-f", file])
            #expect(result.status == 1, "\(file): \(result)")
            #expect(result.stderr == "error: \(message): give a text file of shell commands with -f\n", "\(result.stderr)")
        }
        // Unreadable by the user who runs the job.
        let unreadable = try user.run([product("run-overlay"), "--runtime", "native", "-o", scene.file("env.ext3") + ":ro",
                                       "-f", "secret.txt"], currentDirectory: scene.directory.path,
                                      environment: scene.configIsolation)
        #expect(unreadable.status == 1, "\(unreadable)")
        #expect(unreadable.stderr.contains("command file 'secret.txt' cannot be read (Permission denied)"), "\(unreadable.stderr)")
        // Nothing ran: no junk file from a binary's bytes run as commands.
        #expect(try scene.directory.listing() == before)
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }

    @Test func singularityOptionsAreRefusedByTheNativeRuntimeInOneLine() throws {
        let scene = try NativeScene()
        try scene.overlay("env.ext3")
        let cases: [(String, String)] = [
            ("--nv", "it does not set up GPUs"),
            ("--fakeroot", "it runs the job as you"),
            ("--writable-tmpfs", "give a writable overlay as the first -o instead"),
            ("--bogus", "it takes no Singularity/Apptainer options"),
        ]
        for (option, advice) in cases {
            for dryRun in [[], ["--dry-run"]] {
                let result = try scene.run("run-overlay", ["-o", "env.ext3:ro", "--runtime-option=\(option)"] + dryRun + ["--", "true"])
                #expect(result.status == 1, "\(option): \(result)")
                #expect(result.stderr.hasPrefix("error: --runtime-option=\(option) is not supported by the native runtime: \(advice)"),
                        "\(result.stderr)")
                #expect(result.stderr.split(separator: "\n").count == 1)
                #expect(result.stdout.isEmpty)
            }
        }
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }

    @Test func errorLinesCarryNoRawControlBytes() throws {
        let scene = try NativeScene()
        // A name as hostile images and archives carry it: OSC title, clear screen, BEL.
        let hostile = "evil\u{1B}]0;pwned\u{07}\u{1B}[2J.ext3"
        let result = try scene.run("run-overlay", ["-o", hostile, "--", "true"])
        #expect(result.status == 1, "\(result)")
        #expect(!result.stderr.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" }, "\(result.stderr.debugDescription)")
        #expect(result.stderr.contains("evil\\e]0;pwned\\x07\\e[2J.ext3"), "\(result.stderr.debugDescription)")
    }
}

/// Images that are not what they claim, refused wherever they are opened.
@Suite(.requiresRoot, .requires(executable: "mke2fs"), .requires(executable: "debugfs"), .requires(executable: "e2fsck"))
struct DamagedImageRefusalTests {
    @Test func aTruncatedImageIsRefusedEverywhereItIsOpened() throws {
        let scene = try NativeScene()
        let user = try TestUser.ensure()
        let image = try scene.userOverlay("cut.ext3", for: user)
        #expect(truncate(image, 16 << 20) == 0)
        let before = try Data(contentsOf: URL(fileURLWithPath: image))
        let runs: [(String, ProcessResult)] = [
            ("info", try TestSupport.run([product("overlay"), "info", image])),
            ("check", try TestSupport.run([product("overlay"), "check", image])),
            ("check --repair", try TestSupport.run([product("overlay"), "check", "--repair", image])),
            ("resize", try TestSupport.run([product("overlay"), "resize", image, "-s", "128"])),
            ("run as root", try scene.run("run-overlay", ["-o", "cut.ext3:ro", "--", "true"])),
            ("run writable as root", try scene.run("run-overlay", ["-o", "cut.ext3", "--", "true"])),
            ("run as a user", try user.run([product("run-overlay"), "--runtime", "native", "-o", image + ":ro", "--", "true"],
                                           currentDirectory: scene.directory.path, environment: scene.configIsolation)),
        ]
        for (what, result) in runs {
            #expect(result.status != 0, "\(what): \(result)")
            #expect(result.stderr.contains("is truncated: its filesystem takes 32 MiB but the file holds only 16 MiB"), "\(what): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1, "\(what): \(result.stderr)")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: image)) == before, "a refused image is left as it was")
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }

    @Test func aWritableOverlayReadOnlyOnDiskIsNotWrittenByRoot() throws {
        let scene = try NativeScene()
        let image = try scene.overlay("locked.ext3")
        chmod(image, 0o444)
        let before = try Data(contentsOf: URL(fileURLWithPath: image))
        let result = try scene.run("run-overlay", ["-o", "locked.ext3", "--", "/bin/sh", "-c", "echo x > /written-\(scene.mark)"])
        #expect(result.status == 1, "\(result)")
        #expect(result.stderr == "error: overlay 'locked.ext3' is read-only on disk (mode 0444): use it read-only with 'locked.ext3:ro', or make it writable first (chmod u+w locked.ext3)\n", "\(result.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: image)) == before)
        // Read-only use is fine.
        let reading = try scene.run("run-overlay", ["-o", "locked.ext3:ro", "--", "true"])
        #expect(reading.status == 0, "\(reading)")
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }

    @Test func anImageWithoutUpperIsNoOverlayInEveryMessage() throws {
        let scene = try NativeScene()
        try FixtureImage.ext3(at: scene.file("bare.ext3"), mebibytes: 16, layout: false)
        let info = try TestSupport.run([product("overlay"), "info", scene.file("bare.ext3")])
        #expect(info.status == 0, "\(info)")
        #expect(info.stdout.contains("upper/: missing (not an overlay: it cannot be mounted, read-only or writable, until it has one)"), "\(info.stdout)")
        #expect(!info.stdout.contains("can mount it read-only"), "\(info.stdout)")
        let readOnly = try scene.run("run-overlay", ["-o", "bare.ext3:ro", "--", "true"])
        #expect(readOnly.status == 1, "\(readOnly)")
        #expect(readOnly.stderr == "error: overlay 'bare.ext3' has no upper/ directory at its root, so it is not an overlay (Apptainer stacks upper/ too): add it with: debugfs -w -R 'mkdir upper' bare.ext3, or pack the files with create-overlay --from\n", "\(readOnly.stderr)")
        let writable = try scene.run("run-overlay", ["-o", "bare.ext3", "--", "true"])
        #expect(writable.status == 1, "\(writable)")
        #expect(writable.stderr.contains("has no upper/ and work/ directory at its root, so it cannot be mounted writable: add them with: debugfs"), "\(writable.stderr)")
        #expect(!writable.stderr.contains(":ro"), "no advice that fails: \(writable.stderr)")
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }

    @Test(.requires(executable: "resize2fs"))
    func anImageWithNoFreeInodesSaysWhatToDoAndResizeSaysHowFarToGrow() throws {
        let scene = try NativeScene()
        let image = scene.file("full.ext3")
        let made = try TestSupport.run([product("create-overlay"), "-s", "8", "-n", "1", "-o", image])
        #expect(made.status == 0, "\(made)")
        // Fill every inode through the kernel, as a job would.
        let mountPoint = scene.file("m")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let filled = try TestSupport.run(["/bin/sh", "-c", "mount -o loop \"$0\" \"$1\" && cd \"$1/upper\" && i=0; while touch f$i 2>/dev/null; do i=$((i+1)); done; cd /; umount \"$1\"", image, mountPoint], timeout: 120)
        #expect(filled.status == 0, "\(filled)")
        let refused = try scene.run("run-overlay", ["-o", "full.ext3", "--", "true"])
        #expect(refused.status == 1, "\(refused)")
        #expect(refused.stderr.hasPrefix("error: overlay 'full.ext3' has no free inodes (all 1008 files are used), so it cannot be mounted writable"), "\(refused.stderr)")
        #expect(refused.stderr.split(separator: "\n").count == 1)
        // Read-only, it is there to look at.
        let looking = try scene.run("run-overlay", ["-o", "full.ext3:ro", "--", "/bin/sh", "-c", "ls /upper 2>/dev/null; true"])
        #expect(looking.status == 0, "\(looking)")
        let small = try TestSupport.run([product("overlay"), "resize", image, "-s", "16"])
        #expect(small.status == 0, "\(small)")
        // Twice the size, at least twice the inodes (a rebuild: resize2fs would add none).
        #expect(small.stdout.contains("grown from 8 MiB to 16 MiB and rebuilt with more inodes"), "\(small.stdout)")
        #expect(small.stdout.contains("inodes 1,008 -> 2,016"), "\(small.stdout)")
        let large = try TestSupport.run([product("overlay"), "resize", image, "-s", "300"])
        #expect(large.status == 0, "\(large)")
        #expect(large.stdout.contains("inodes 2,016 -> "), "\(large.stdout)")
        let inodes = Int(try CreateOracle.superblock(image)["Inode count"] ?? "") ?? 0
        #expect(inodes >= 2016 * 300 / 16, "\(inodes)")
        let usable = try scene.run("run-overlay", ["-o", "full.ext3", "--", "/bin/sh", "-c", "echo more > /more-\(scene.mark)"])
        #expect(usable.status == 0, "\(usable)")
        #expect(try FixtureImage.isClean(image))
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }

    /// After a SIGKILL, the kernel unmounts the image and frees its loop device some time after
    /// the tool's processes are gone: the image's lock must last until then, so no second run
    /// mounts it while the first mount still lives (two loop devices, two journals on one file).
    @Test func theLockOfAKilledRunOutlivesItsLoopDevice() throws {
        let scene = try NativeScene()
        let image = try scene.overlay("env.ext3")
        for round in 0..<3 {
            let tool = try scene.start(["-o", "env.ext3", "--", "sh", "-c", "echo ready; exec sleep 120"])
            #expect(tool.readLine(timeout: 30) == "ready")
            #expect(loopDevices(backing: image).count == 1, "round \(round)")
            tool.signal(SIGKILL)
            var overlap = false
            let deadline = Date().addingTimeInterval(10)
            // Until the loop device is gone, the lock must be held.
            while Date() < deadline {
                // The lock first: a device still attached after the lock was found free overlapped.
                let free = writeLockIsFree(image)
                let attached = !loopDevices(backing: image).isEmpty
                if attached && free { overlap = true; break }
                if !attached { break }
                usleep(200)
            }
            _ = tool.wait(timeout: 10)
            #expect(!overlap, "round \(round): the lock was free while the killed run's loop device was still attached")
            #expect(scene.leftovers(waiting: 10).isEmpty, "\(scene.leftovers())")
        }
        #expect(try FixtureImage.isClean(image))
        let again = try scene.run("run-overlay", ["-o", "env.ext3", "--", "true"])
        #expect(again.status == 0, "\(again)")
    }

    func loopDevices(backing path: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? []
        return names.filter { name in
            guard name.hasPrefix("loop"),
                  let backing = try? String(contentsOfFile: "/sys/block/\(name)/loop/backing_file", encoding: .utf8) else { return false }
            return backing.trimmingCharacters(in: .whitespacesAndNewlines) == path
        }
    }

    /// Whether an OFD write lock on the whole file could be taken now (taken and let go).
    func writeLockIsFree(_ path: String) -> Bool {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var lock = flock()
        lock.l_type = Int16(F_WRLCK)
        lock.l_whence = Int16(SEEK_SET)
        return fcntl(fd, 37 /* F_OFD_SETLK */, &lock) == 0
    }

    /// A job that fills its writable image is told so after it ends; its own exit status still
    /// passes through.
    @Test func aJobThatFilledItsImageIsToldSoWithTheFix() throws {
        let scene = try NativeScene()
        let user = try TestUser.ensure()
        TestUser.openFuseToUsers()
        let image = try scene.userOverlay("small.ext3", for: user)
        let fill = ["--", "/bin/sh", "-c", "dd if=/dev/zero of=/opt/\(scene.mark)/fill bs=1M 2>/dev/null; exit 3"]
        let asRoot = try scene.run("run-overlay", ["-o", "small.ext3"] + fill)
        #expect(asRoot.status == 3, "\(asRoot)")
        #expect(asRoot.stderr.contains("warning: small.ext3 is full ("), "\(asRoot.stderr)")
        #expect(asRoot.stderr.contains("grow it with overlay resize small.ext3 -s SIZE"), "\(asRoot.stderr)")
        let emptied = try scene.run("run-overlay", ["-o", "small.ext3", "--", "rm", "-f", "/opt/\(scene.mark)/fill"])
        #expect(emptied.status == 0, "\(emptied)")
        #expect(!emptied.stderr.contains("full"), "an image with room says nothing: \(emptied.stderr)")
        #expect(try FixtureImage.isClean(image))
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }
}

/// Where `create-overlay --from` puts a tree inside the container.
@Suite(.requiresRoot)
struct PackPlacementTests {
    /// A software environment (bin/, lib/ at its top) packed without --to would hide the
    /// container's own: refused with the fix; with --to it lies where it belongs and the
    /// container's commands still run.
    @Test func anEnvironmentGoesWhereItBelongs() throws {
        let scene = try NativeScene()
        let env = scene.file("env")
        for dir in ["bin", "lib/python3.11/site-packages", "lib64"] {
            try FileManager.default.createDirectory(atPath: "\(env)/\(dir)", withIntermediateDirectories: true)
        }
        try "#!/bin/sh\necho env-python\n".write(toFile: "\(env)/bin/python", atomically: true, encoding: .utf8)
        chmod("\(env)/bin/python", 0o755)
        let refused = try TestSupport.run([product("create-overlay"), "--from", "env"], currentDirectory: scene.directory.path)
        #expect(refused.status == 1, "\(refused)")
        #expect(refused.stderr.hasPrefix("error: env has bin/, lib/, lib64/ at its top: stacked at the container's / they would hide the container's own"), "\(refused.stderr)")
        #expect(refused.stderr.contains("--to"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: scene.file("env.ext3")), "nothing written")

        let placed = try TestSupport.run([product("create-overlay"), "--from", "env", "--to", "/opt/\(scene.mark)"],
                                         currentDirectory: scene.directory.path)
        #expect(placed.status == 0, "\(placed)")
        let job = try scene.run("run-overlay", ["-o", "env.ext3:ro", "--", "/bin/sh", "-c", "ls / >/dev/null && /opt/\(scene.mark)/bin/python"])
        #expect(job.status == 0, "\(job)")
        #expect(job.stdout == "env-python\n", "\(job)")
        let listing = try TestSupport.run([product("overlay"), "ls", scene.file("env.ext3"), "/upper/opt/\(scene.mark)"])
        #expect(listing.stdout.split(separator: "\n").sorted() == ["bin", "lib", "lib64"], "\(listing)")
        // A whole root tree, when the user says so.
        let root = try TestSupport.run([product("create-overlay"), "--from", "env", "--root-tree", "-o", "root.ext3"],
                                       currentDirectory: scene.directory.path)
        #expect(root.status == 0, "\(root)")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }
}
