import Foundation
import Testing
import TestSupport

/// run-overlay and mount-overlay on the native runtime, as built executables, with real loop
/// devices, ext3 and overlayfs mounts (as root), and fuse2fs/fuse-overlayfs/squashfuse (as an
/// ordinary user). Every case ends by checking that nothing of the run is left: no loop device
/// backed by its images, no mount or process naming its directory.
@Suite("Native runtime", .serialized, .requiresRoot,
       .requires(executable: "mke2fs"), .requires(executable: "debugfs"), .requires(executable: "e2fsck"))
struct NativeRuntimeTests {
    @Test func twoOverlaysTheFirstWrittenTheSecondRead() throws {
        let scene = try NativeScene()
        let mark = scene.mark
        try scene.overlay("env.ext3")
        try scene.overlay("data.ext3", files: ["srv/\(mark)/input.txt": "data line\n"])
        let before = try Data(contentsOf: URL(fileURLWithPath: scene.file("data.ext3")))
        try """
            cat /srv/\(mark)/input.txt
            mkdir -p /opt/\(mark)
            echo "written inside" > /opt/\(mark)/result.txt
            pwd

            """.write(toFile: scene.file("job.txt"), atomically: true, encoding: .utf8)
        let result = try scene.run("run-overlay", ["-o", "env.ext3", "-o", "data.ext3", "-f", "job.txt"])
        #expect(result.status == 0, "\(result)")
        // The working directory is the invoking one.
        #expect(result.stdout == "data line\n\(scene.directory.path)\n", "\(result)")
        #expect(try FixtureImage.cat(scene.file("env.ext3"), "upper/opt/\(mark)/result.txt") == "written inside\n")
        #expect(!FileManager.default.fileExists(atPath: "/opt/\(mark)"), "the write reached the host")
        #expect(try Data(contentsOf: URL(fileURLWithPath: scene.file("data.ext3"))) == before, "the read-only image changed")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
        #expect(try FixtureImage.isClean(scene.file("data.ext3")))
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }

    @Test func laterReadOnlyOverlaysSitAboveEarlierOnes() throws {
        let scene = try NativeScene()
        try scene.overlay("env.ext3")
        try scene.overlay("b.ext3", files: ["srv/\(scene.mark)/which": "b\n"])
        try scene.overlay("c.ext3", files: ["srv/\(scene.mark)/which": "c\n"])
        let result = try scene.run("run-overlay", ["-o", "env.ext3", "-o", "b.ext3", "-o", "c.ext3:ro", "--", "cat", "/srv/\(scene.mark)/which"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "c\n")
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }

    @Test(arguments: [("exit 0", Int32(0)), ("exit 7", 7), ("kill -USR1 $$", 128 + SIGUSR1)])
    func theExitStatusPassesThrough(script: String, expected: Int32) throws {
        let scene = try NativeScene()
        try scene.overlay("env.ext3")
        let result = try scene.run("run-overlay", ["-o", "env.ext3:ro", "--", "sh", "-c", script])
        #expect(result.status == expected, "\(result)")
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }

    @Test func aSecondWriterIsRefusedWhileTheFirstRuns() throws {
        let scene = try NativeScene()
        try scene.overlay("env.ext3")
        let first = try scene.start(["-o", "env.ext3", "--", "sh", "-c", "echo ready; sleep 60"])
        #expect(first.readLine(timeout: 30) == "ready")
        let second = try scene.run("run-overlay", ["-o", "env.ext3", "--", "true"])
        #expect(second.status == 1, "\(second)")
        #expect(second.stderr.contains("env.ext3 is in use: another job has it mounted writable; wait for it to finish"), "\(second)")
        let reader = try scene.run("run-overlay", ["-o", "env.ext3:ro", "--", "true"])
        #expect(reader.status == 1, "\(reader)")
        #expect(reader.stderr.contains("is in use"), "\(reader)")
        first.signal(SIGTERM)
        let ended = first.wait(timeout: 30)
        #expect(ended.status == 128 + SIGTERM, "\(ended)")
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
    }

    @Test func twoReadersAtOnce() throws {
        let scene = try NativeScene()
        try scene.overlay("data.ext3", files: ["srv/\(scene.mark)/input.txt": "shared\n"])
        let first = try scene.start(["-o", "data.ext3:ro", "--", "sh", "-c", "cat /srv/\(scene.mark)/input.txt; sleep 60"])
        #expect(first.readLine(timeout: 30) == "shared")
        let second = try scene.run("run-overlay", ["-o", "data.ext3:ro", "--", "cat", "/srv/\(scene.mark)/input.txt"])
        #expect(second.status == 0, "\(second)")
        #expect(second.stdout == "shared\n")
        // A writer is refused while they read.
        let writer = try scene.run("run-overlay", ["-o", "data.ext3", "--", "true"])
        #expect(writer.stderr.contains("other jobs have it mounted read-only; mount it read-only with"), "\(writer)")
        first.signal(SIGINT)
        #expect(first.wait(timeout: 30).status == 128 + SIGINT)
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }

    @Test func aKilledToolLeavesNothingBehind() throws {
        let scene = try NativeScene()
        try scene.overlay("env.ext3")
        try scene.overlay("data.ext3")
        // A background process the job leaves running must go too.
        let tool = try scene.start(["-o", "env.ext3", "-o", "data.ext3", "--", "sh", "-c",
                                    "sleep 120 & mkdir -p /opt/\(scene.mark); echo ready; echo x > /opt/\(scene.mark)/f; wait"])
        #expect(tool.readLine(timeout: 30) == "ready")
        #expect(!scene.runningProcesses().isEmpty)
        tool.signal(SIGKILL)
        _ = tool.wait(timeout: 10)
        #expect(scene.leftovers(waiting: 10).isEmpty, "\(scene.leftovers())")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
        #expect(try FixtureImage.isClean(scene.file("data.ext3")))
        // The lock went with it: the image can be written again.
        let again = try scene.run("run-overlay", ["-o", "env.ext3", "--", "true"])
        #expect(again.status == 0, "\(again)")
    }

    @Test func dryRunPrintsThePlanAndMountsNothing() throws {
        let scene = try NativeScene()
        try scene.overlay("env.ext3")
        try scene.overlay("data.ext3")
        let result = try scene.run("run-overlay", ["--dry-run", "-o", "env.ext3", "-o", "data.ext3", "-B", "/etc:/mnt/etc:ro", "--", "echo", "a b"])
        #expect(result.status == 0, "\(result)")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix("mount -t ext3 -o loop,autoclear,rw,nosuid,nodev,errors=remount-ro \(scene.file("env.ext3")) ") })
        #expect(lines.contains { $0.hasPrefix("mount -t ext3 -o loop,autoclear,ro,nosuid,nodev,errors=remount-ro \(scene.file("data.ext3")) ") })
        #expect(lines.contains { $0.contains("mount -t overlay") && $0.contains("/image1/upper:/,upperdir=") })
        #expect(lines.contains("mount --rbind -o ro /etc /run/overlay-toolkit/root/mnt/etc"))
        #expect(lines.last?.hasSuffix("echo 'a b'") == true, "\(lines)")
        #expect(scene.leftovers().isEmpty)
    }

    @Test(.requires(executable: "mksquashfs", "squashfs-tools"), .requires(executable: "siftool"))
    func aSIFContainerIsTheRoot() throws {
        let scene = try NativeScene()
        try scene.overlay("env.ext3")
        let sif = try scene.sifContainer()
        let result = try scene.run("run-overlay", ["-o", "env.ext3", "-c", sif, "--", "/bin/sh", "-c",
                                                   "cat /etc/overlaytest-sif.txt; echo new > /etc/added.txt; ls /bin/sh"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "inside the SIF\n/bin/sh\n", "\(result)")
        #expect(try FixtureImage.cat(scene.file("env.ext3"), "upper/etc/added.txt") == "new\n")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }

    @Test(.requires(executable: "busybox", "a static shell for the container tree"))
    func aSandboxDirectoryIsTheRoot() throws {
        let scene = try NativeScene()
        try scene.overlay("env.ext3")
        let sandbox = try scene.containerTree("sandbox", marker: "overlaytest-sandbox.txt", text: "inside the sandbox\n")
        let result = try scene.run("run-overlay", ["-o", "env.ext3", "-c", "sandbox", "--", "/bin/sh", "-c",
                                                   "cat /etc/overlaytest-sandbox.txt && echo new > /etc/added.txt && ls /bin/sh && pwd"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "inside the sandbox\n/bin/sh\n\(scene.directory.path)\n", "\(result)")
        #expect(try FixtureImage.cat(scene.file("env.ext3"), "upper/etc/added.txt") == "new\n")
        #expect(!FileManager.default.fileExists(atPath: "\(sandbox)/etc/added.txt"), "the write reached the sandbox")
        // The binds' mount points live in the run's own layer, not in the sandbox.
        #expect(!FileManager.default.fileExists(atPath: "\(sandbox)\(scene.directory.path)"), "a mount point was made in the sandbox")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }

    @Test(.requires(executable: "busybox", "a static shell for the container tree"), .requires(executable: "fuse2fs"),
          .requires(executable: "fuse-overlayfs"))
    func anOrdinaryUserRunsInASandboxDirectory() throws {
        let user = try TestUser.ensure()
        TestUser.openFuseToUsers()
        let scene = try NativeScene()
        let mark = scene.mark
        try scene.userOverlay("env.ext3", for: user)
        let sandbox = try scene.containerTree("sandbox", marker: "overlaytest-sandbox.txt", text: "inside the sandbox\n")
        let result = try user.run([product("run-overlay"), "--runtime", "native", "-o", scene.file("env.ext3"), "-c", sandbox,
                                   "--", "/bin/sh", "-c", "cat /etc/overlaytest-sandbox.txt /opt/\(mark)/readme.txt && echo written > /opt/\(mark)/new.txt && id -u"],
                                  currentDirectory: scene.directory.path, environment: scene.configIsolation)
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "inside the sandbox\nmine\n\(user.uid)\n", "\(result)")
        #expect(try FixtureImage.cat(scene.file("env.ext3"), "upper/opt/\(mark)/new.txt") == "written\n")
        let owner = try run(["debugfs", "-R", "stat upper/opt/\(mark)/new.txt", scene.file("env.ext3")])
        #expect(owner.stdout.contains("User:  \(user.uid)   Group:  \(user.gid)"), "\(owner.stdout)")
        #expect(!FileManager.default.fileExists(atPath: "\(sandbox)/opt"), "the write reached the sandbox")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
        #expect(scene.leftovers(waiting: 5).isEmpty, "\(scene.leftovers())")
    }

    @Test(.requires(executable: "fuse2fs"), .requires(executable: "fuse-overlayfs"),
          .requires(executable: "squashfuse"), .requires(executable: "mksquashfs"), .requires(executable: "siftool"))
    func anOrdinaryUserRunsUnprivilegedAndTheWriteIsTheirs() throws {
        let user = try TestUser.ensure()
        TestUser.openFuseToUsers()
        let scene = try NativeScene()
        let mark = scene.mark
        try scene.userOverlay("env.ext3", for: user)
        try scene.overlay("data.ext3", files: ["srv/\(mark)/input.txt": "data line\n"])
        let sif = try scene.sifContainer()
        for container in [[], ["-c", sif]] {
            let result = try user.run([product("run-overlay"), "--runtime", "native", "-o", scene.file("env.ext3"),
                                       "-o", scene.file("data.ext3")] + container + ["--", "/bin/sh", "-c",
                                       "cat /srv/\(mark)/input.txt; echo written > /opt/\(mark)/new\(container.count).txt; id -u"],
                                      currentDirectory: scene.directory.path, environment: scene.configIsolation)
            #expect(result.status == 0, "\(result)")
            #expect(result.stdout == "data line\n\(user.uid)\n", "\(result)")
            #expect(try FixtureImage.cat(scene.file("env.ext3"), "upper/opt/\(mark)/new\(container.count).txt") == "written\n")
            let owner = try run(["debugfs", "-R", "stat upper/opt/\(mark)/new\(container.count).txt", scene.file("env.ext3")])
            #expect(owner.stdout.contains("User:  \(user.uid)   Group:  \(user.gid)"), "\(owner.stdout)")
            #expect(scene.leftovers(waiting: 5).isEmpty, "\(scene.leftovers())")
        }
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
        #expect(try FixtureImage.isClean(scene.file("data.ext3")))
    }

    /// A read-only stack on a SIF or a sandbox: the kernel's overlay in the user namespace
    /// (`auto` and `kernel`), or fuse-overlayfs when asked for; the same view either way.
    @Test(.requires(executable: "busybox", "a static shell for the container tree"), .requires(executable: "fuse2fs"),
          .requires(executable: "fuse-overlayfs"), .requires(executable: "squashfuse"), .requires(executable: "mksquashfs"),
          .requires(executable: "siftool"), arguments: ["auto", "kernel", "fuse-overlayfs"])
    func anOrdinaryUsersReadOnlyStackOnAContainer(stack: String) throws {
        let user = try TestUser.ensure()
        TestUser.openFuseToUsers()
        let scene = try NativeScene()
        let mark = scene.mark
        try scene.userOverlay("env.ext3", for: user)
        try scene.overlay("data.ext3", files: ["srv/\(mark)/input.txt": "data line\n"])
        let sandbox = try scene.containerTree("sandbox", marker: "overlaytest-sandbox.txt", text: "inside the sandbox\n")
        let sif = try scene.sifContainer()
        let type = stack == "fuse-overlayfs" ? "fuse.fuse-overlayfs" : "overlay"
        for (container, marker) in [(sandbox, "overlaytest-sandbox.txt"), (sif, "overlaytest-sif.txt")] {
            let result = try user.run([product("run-overlay"), "--runtime", "native", "-o", scene.file("env.ext3") + ":ro",
                                       "-o", scene.file("data.ext3"), "-c", container, "--", "/bin/sh", "-c",
                                       "cat /etc/\(marker) /srv/\(mark)/input.txt /opt/\(mark)/readme.txt; while read -r d m t r; do [ \"$m\" = / ] && echo $t; done < /proc/self/mounts; echo x > /opt/\(mark)/new.txt || echo refused"],
                                      currentDirectory: scene.directory.path,
                                      environment: scene.configIsolation.merging(["OVERLAY_FUSE_STACK": stack]) { $1 })
            #expect(result.status == 0, "\(result)")
            let text = marker == "overlaytest-sif.txt" ? "inside the SIF" : "inside the sandbox"
            #expect(result.stdout == "\(text)\ndata line\nmine\n\(type)\nrefused\n", "\(stack) \(container): \(result)")
            #expect(scene.leftovers(waiting: 5).isEmpty, "\(scene.leftovers())")
        }
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
        #expect(try FixtureImage.isClean(scene.file("data.ext3")))
    }

    /// 20,000 files in one directory, listed and each read back, as an ordinary user: a
    /// read-only image on a sandbox through the built-in driver, under the kernel's overlay
    /// and under fuse-overlayfs (the fallback where the kernel refuses its overlay, forced
    /// here); a writable one through the built-in driver's writable mode on the host root
    /// (under fuse-overlayfs) and on the sandbox (under the kernel's overlay), where the job
    /// then makes 20,000 more files in one directory and deletes every other one; the image
    /// is clean after. (Through fuse2fs the writable cases took minutes: libext2fs looks a name
    /// up by reading the directory from its start.)
    @Test(.requires(executable: "busybox", "a static shell for the container tree"),
          .requires(executable: "fuse-overlayfs"), arguments: ["kernel", "fuse-overlayfs", "writable", "writable-sandbox"])
    func anOrdinaryUserReadsADirectoryOf20000Files(stack: String) throws {
        let user = try TestUser.ensure()
        TestUser.openFuseToUsers()
        let scene = try NativeScene()
        let tree = scene.file("tree")
        let many = "\(tree)/opt/\(scene.mark)/many"
        try FileManager.default.createDirectory(atPath: many, withIntermediateDirectories: true)
        var expected = ""
        for i in (1...20_000).map({ "f\($0)" }).sorted() {
            try "\(i) \(String(repeating: "x", count: i.count * 7))\n".write(toFile: "\(many)/\(i)", atomically: false, encoding: .utf8)
            expected += "\(i) \(String(repeating: "x", count: i.count * 7))\n"
        }
        // The tree is the user's, so upper/ and everything packed is too.
        _ = try TestSupport.run(["chown", "-R", "\(user.uid):\(user.gid)", tree])
        // Room for the writable runs' 20,000 more files.
        let made = try TestSupport.run([product("create-overlay"), "--from", tree, "-n", "60", "-o", scene.file("many.ext3")], timeout: 300)
        #expect(made.status == 0, "\(made)")
        chown(scene.file("many.ext3"), user.uid, user.gid)
        for dir in ["upper", "work"] {
            for field in ["uid \(user.uid)", "gid \(user.gid)"] {
                try TestSupport.run(["debugfs", "-w", "-R", "set_inode_field \(dir) \(field)", scene.file("many.ext3")])
            }
        }
        let sandbox = try scene.containerTree("sandbox", marker: "overlaytest-sandbox.txt", text: "inside the sandbox\n")
        let writable = stack.hasPrefix("writable")
        let container = stack == "writable" ? [] : ["-c", sandbox]
        let image = scene.file("many.ext3") + (writable ? "" : ":ro")
        // The writable runs make a directory of 20,000 more and thin it (busybox's seq, sed,
        // xargs, touch and rm, as the sandbox has only busybox), and say which stack they ran on.
        let more = "mkdir /data && cd /data && busybox seq 20000 | busybox sed 's/^/n/' | busybox xargs busybox touch"
            + " && busybox seq 1 2 20000 | busybox sed 's/^/n/' | busybox xargs busybox rm && ls | busybox wc -l"
            + " && while read -r d m t r; do [ \"$m\" = / ] && echo $t; done < /proc/self/mounts"
        let job = "ls /opt/\(scene.mark)/many | wc -l; (cd /opt/\(scene.mark)/many && cat *) > /tmp/\(scene.mark).read; "
            + (writable ? more : "true") + "; cat /tmp/\(scene.mark).read; rm /tmp/\(scene.mark).read"
        let result = try user.run([product("run-overlay"), "--runtime", "native", "-o", image] + container + ["--", "/bin/sh", "-c", job],
                                  currentDirectory: scene.directory.path,
                                  environment: scene.configIsolation.merging(["OVERLAY_FUSE_STACK": writable ? "auto" : stack]) { $1 },
                                  timeout: 600)
        #expect(result.status == 0, "\(result.status) \(result.stderr)")
        var lines = result.stdout.split(separator: "\n", maxSplits: writable ? 3 : 1, omittingEmptySubsequences: false).map(String.init)
        #expect(lines.first?.trimmingCharacters(in: .whitespaces) == "20000", "\(lines.prefix(3)) \(result.stderr)")
        if writable {
            #expect(lines.count == 4 && lines[1].trimmingCharacters(in: .whitespaces) == "10000", "\(lines.prefix(3)) \(result.stderr)")
            #expect(lines.count == 4 && lines[2] == (stack == "writable" ? "fuse.fuse-overlayfs" : "overlay"), "\(lines.prefix(3))")
            lines.removeSubrange(1..<min(3, lines.count))
        }
        #expect(lines.last == expected, "the files read back differ")
        #expect(scene.leftovers(waiting: 10).isEmpty, "\(scene.leftovers())")
        #expect(try FixtureImage.isClean(scene.file("many.ext3")))
    }

    /// A full image fails the write itself with ENOSPC, as a disk does, not only fsync or close
    /// (fuse-overlayfs's write-back cache accepted every write: dd never ended).
    @Test(.requires(executable: "fuse2fs"), .requires(executable: "fuse-overlayfs"), .requires(executable: "python3"))
    func anOrdinaryUsersWriteToAFullImageFailsAtWrite() throws {
        let user = try TestUser.ensure()
        TestUser.openFuseToUsers()
        let scene = try NativeScene()
        try FixtureImage.ext3(at: scene.file("small.ext3"), mebibytes: 16, owner: (user.uid, user.gid))
        chown(scene.file("small.ext3"), user.uid, user.gid)
        // 5% of the blocks reserved for root, as mke2fs's default is.
        let tuned = try TestSupport.run(["tune2fs", "-m", "5", scene.file("small.ext3")])
        #expect(tuned.status == 0, "\(tuned)")
        let script = """
            import os, errno
            fd = os.open("/big", os.O_WRONLY | os.O_CREAT)
            total = 0
            try:
                while total < (64 << 20):
                    total += os.write(fd, b"x" * (1 << 20))
                print("no error")
            except OSError as e:
                # Then 4 KiB at a time, to the last block it may have.
                try:
                    while True:
                        total += os.write(fd, b"x" * 4096)
                except OSError:
                    pass
                print(errno.errorcode[e.errno], total <= (16 << 20))
            os.close(fd)
            """
        let result = try user.run([product("run-overlay"), "--runtime", "native", "-o", scene.file("small.ext3"), "--", "sh", "-c",
                                   "timeout 60 dd if=/dev/zero of=/dd bs=1M; rm /dd; python3 -c '\(script)'"],
                                  currentDirectory: scene.directory.path, environment: scene.configIsolation, timeout: 120)
        #expect(result.status == 0, "\(result)")
        #expect(result.stderr.contains("dd: error writing '/dd': No space left on device"), "\(result)")
        #expect(result.stdout == "ENOSPC True\n", "\(result)")
        #expect(scene.leftovers(waiting: 5).isEmpty, "\(scene.leftovers())")
        #expect(try FixtureImage.isClean(scene.file("small.ext3")))
        // The blocks reserved for root (mke2fs's 5%) stayed free, as on the kernel's ext3.
        let header = try TestSupport.run(["dumpe2fs", "-h", scene.file("small.ext3")]).stdout
        func field(_ name: String) -> Int? {
            header.split(separator: "\n").first { $0.hasPrefix(name + ":") }.flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) }
        }
        let free = field("Free blocks"), reserved = field("Reserved block count")
        #expect(reserved.map { $0 > 0 } == true && free.flatMap { f in reserved.map { f >= $0 } } == true, "free \(String(describing: free)), reserved \(String(describing: reserved))")
    }

    /// fuse-overlayfs crosses mount points in its lowest layer: given the host root itself, a
    /// job that walked into the run's staging area made it wait on its own mount for ever.
    @Test(.requires(executable: "fuse2fs"), .requires(executable: "fuse-overlayfs"))
    func anOrdinaryUsersJobWalksTheWholeHostRootWithoutHanging() throws {
        let user = try TestUser.ensure()
        TestUser.openFuseToUsers()
        let scene = try NativeScene()
        let mark = scene.mark
        try scene.userOverlay("env.ext3", for: user)
        // /run recursively, where the staging area is (/run/overlay-toolkit, or /run itself
        // when that is missing), and every directory three levels down that the user may read.
        let script = """
            ls -laR /run > /dev/null
            find / -xdev -maxdepth 3 ! -readable -prune -o -print > /dev/null
            echo walked
            cat /etc/debian_version
            echo written > /opt/\(mark)/new.txt
            """
        let result = try user.run([product("run-overlay"), "--runtime", "native", "-o", scene.file("env.ext3"),
                                   "--", "/bin/sh", "-e", "-c", script],
                                  currentDirectory: scene.directory.path, environment: scene.configIsolation, timeout: 60)
        #expect(!result.timedOut, "\(result)")
        #expect(result.status == 0, "\(result)")
        // The host's own files, as before.
        let host = try String(contentsOfFile: "/etc/debian_version", encoding: .utf8)
        #expect(result.stdout == "walked\n" + host, "\(result)")
        #expect(try FixtureImage.cat(scene.file("env.ext3"), "upper/opt/\(mark)/new.txt") == "written\n")
        #expect(scene.leftovers(waiting: 10).isEmpty, "\(scene.leftovers())")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
    }

    /// With `stoppedOverlayDriver`, fuse-overlayfs is stopped first, so that it does not act on
    /// the SIGTERM it gets when the setup process dies: the run's watchdog must SIGKILL it.
    @Test(.requires(executable: "fuse2fs"), .requires(executable: "fuse-overlayfs"), arguments: [false, true])
    func anOrdinaryUsersKilledToolTakesTheFUSEDriversWithIt(stoppedOverlayDriver: Bool) throws {
        let user = try TestUser.ensure()
        TestUser.openFuseToUsers()
        let scene = try NativeScene()
        try FixtureImage.ext3(at: scene.file("env.ext3"), mebibytes: 32, owner: (user.uid, user.gid))
        chown(scene.file("env.ext3"), user.uid, user.gid)
        try scene.overlay("data.ext3", files: ["srv/\(scene.mark)/input.txt": "data line\n"])
        let data = try Data(contentsOf: URL(fileURLWithPath: scene.file("data.ext3")))
        let tool = try SpawnedProcess(["runuser", "-u", user.name, "--", "/usr/bin/env", "-i", "PATH=\(NativeScene.path)",
                                       "HOME=\(scene.directory.path)", product("run-overlay"), "--runtime", "native",
                                       "-o", scene.file("env.ext3"), "-o", scene.file("data.ext3") + ":ro",
                                       "--", "sh", "-c", "cat /srv/\(scene.mark)/input.txt; echo ready; echo x > /written; sleep 120"],
                                      currentDirectory: scene.directory.path)
        #expect(tool.readLine(timeout: 30) == "data line")
        #expect(tool.readLine(timeout: 30) == "ready")
        #expect(!scene.runningProcesses().contains { $0.contains("fuse2fs") }, "\(scene.runningProcesses())")
        // Both images: the built-in driver, forked by the setup process (so its command line
        // is the tool's) and named for what it does, once for each image.
        let imageDrivers = scene.runningProcesses().compactMap { line -> Int32? in
            guard let pid = line.split(separator: " ", maxSplits: 1).first.flatMap({ Int32($0) }) else { return nil }
            let name = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? ""
            return name == "overlay-image\n" ? pid : nil
        }
        #expect(imageDrivers.count == 2, "\(scene.runningProcesses())")
        // Each holds none of the setup process's descriptors (pipes, locks, the other image),
        // only its standard streams, the image it serves and /dev/fuse.
        var imageDriver: Int32?
        var served: [String] = []
        for pid in imageDrivers {
            let path = "/proc/\(pid)/fd"
            let held = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).compactMap { entry -> String? in
                guard let fd = Int(entry), fd > 2 else { return nil }
                return try? FileManager.default.destinationOfSymbolicLink(atPath: "\(path)/\(entry)")
            }
            // (The read-only driver opens its image twice: libext2fs's and its own for contents.)
            let images = Array(Set(held.filter { $0 != "/dev/fuse" }))
            #expect(held.contains("/dev/fuse") && images.count == 1, "\(held)")
            served += images
            if images == [scene.file("data.ext3")] { imageDriver = pid }
        }
        #expect(served.sorted() == [scene.file("data.ext3"), scene.file("env.ext3")], "\(served)")
        // runuser's child is the tool: kill it, not runuser.
        let toolPid = scene.runningProcesses().compactMap { line -> Int32? in
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            return parts.count == 2 && parts[1].hasPrefix(product("run-overlay") + " --runtime") ? Int32(parts[0]) : nil
        }.first
        #expect(toolPid != nil)
        if stoppedOverlayDriver {
            let driver = scene.runningProcesses().compactMap { line -> Int32? in
                let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
                return parts.count == 2 && parts[1].hasPrefix("fuse-overlayfs ") ? Int32(parts[0]) : nil
            }.first
            #expect(driver != nil, "\(scene.runningProcesses())")
            if let driver { kill(driver, SIGSTOP) }
            if let imageDriver { kill(imageDriver, SIGSTOP) }
        }
        if let toolPid { kill(toolPid, SIGKILL) }
        _ = tool.wait(timeout: 20)
        #expect(scene.leftovers(waiting: 20).isEmpty, "\(scene.leftovers())")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
        #expect(try Data(contentsOf: URL(fileURLWithPath: scene.file("data.ext3"))) == data, "the read-only image changed")
    }

    @Test(.requires(executable: "tmux"))
    func mountOverlayOpensAShellInTheOverlay() throws {
        let scene = try NativeScene()
        try scene.overlay("env.ext3")
        let socket = "overlay-\(scene.mark)"
        let tmux = ["tmux", "-L", socket]
        defer { _ = try? run(tmux + ["kill-server"], timeout: 10) }
        let env = scene.environment().map { "\($0.key)=\($0.value)" }.sorted()
        let command = ["/usr/bin/env", "-i"] + env + ["SHELL=/bin/sh", product("mount-overlay"), "--runtime", "native", "-o", "env.ext3"]
        let started = try run(tmux + ["new-session", "-d", "-s", "t", "-x", "160", "-y", "40", "-c", scene.directory.path,
                                      command.map { "'\($0)'" }.joined(separator: " ")], timeout: 10)
        #expect(started.status == 0, "\(started)")
        #expect(waitFor(timeout: 20) { (try? run(tmux + ["capture-pane", "-p", "-t", "t"], timeout: 5).stdout.contains("[overlay env.ext3]")) ?? false },
                "no prompt: \((try? run(tmux + ["capture-pane", "-p", "-t", "t"], timeout: 5).stdout) ?? "")")
        _ = try run(tmux + ["send-keys", "-t", "t", "mkdir -p /opt/\(scene.mark) && echo typed > /opt/\(scene.mark)/typed.txt; exit", "Enter"], timeout: 10)
        #expect(waitFor(timeout: 20) { (try? run(tmux + ["has-session", "-t", "t"], timeout: 5).status) != 0 }, "the shell did not exit")
        #expect(scene.leftovers(waiting: 5).isEmpty, "\(scene.leftovers())")
        #expect(try FixtureImage.cat(scene.file("env.ext3"), "upper/opt/\(scene.mark)/typed.txt") == "typed\n")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
    }

    // MARK: Errors a user meets: one line, a non-zero status, nothing left

    @Test func errorsAreOneClearLine() throws {
        let scene = try NativeScene()
        try scene.overlay("env.ext3")
        try FixtureImage.mkfs(scene.file("four.ext4"), mebibytes: 16, type: "ext4")
        try FixtureImage.ext3(at: scene.file("bare.ext3"), mebibytes: 16, layout: false)
        let user = try TestUser.ensure()
        let cases: [([String], [String: String], String)] = [
            (["-o", "missing.ext3", "--", "true"], [:], "overlay 'missing.ext3' not found: give an existing image, or make one with create-overlay"),
            (["-o", "four.ext4", "--", "true"], [:], "overlay 'four.ext4' cannot be used: "),
            (["-o", "bare.ext3", "--", "true"], [:], "has no upper/ and work/ directory at its root, so it cannot be mounted writable"),
            (["-o", "env.ext3", "--", "true"], ["SUDO_UID": "\(user.uid)", "SUDO_GID": "\(user.gid)"],
             "overlay 'env.ext3' belongs to user root (its upper/ directory), not to you: use it read-only with 'env.ext3:ro'"),
            (["-o", "env.ext3", "-c", "nowhere.sif", "--", "true"], [:], "container 'nowhere.sif' not found"),
            (["-o", "env.ext3", "-f", "nowhere.txt"], [:], "command file 'nowhere.txt' not found: give an existing file with -f"),
            (["-o", "env.ext3", "--", "no-such-command-\(scene.mark)"], [:], "cannot run 'no-such-command-\(scene.mark)' in the container"),
        ]
        for (arguments, extra, message) in cases {
            let result = try scene.run("run-overlay", arguments, environment: extra)
            #expect(result.status != 0, "\(arguments): \(result)")
            #expect(result.stderr.contains(message), "\(arguments): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1, "\(arguments): \(result.stderr)")
        }
        let four = try scene.run("run-overlay", ["-o", "four.ext4", "--", "true"])
        #expect(four.stderr.contains("extent"), "the ext4 features are named: \(four.stderr)")
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
    }

    @Test func anOrdinaryUserWithoutFUSEDriversIsToldWhatIsMissing() throws {
        let user = try TestUser.ensure()
        let scene = try NativeScene()
        try FixtureImage.ext3(at: scene.file("env.ext3"), mebibytes: 16, owner: (user.uid, user.gid))
        chown(scene.file("env.ext3"), user.uid, user.gid)
        // A PATH without fuse2fs (a machine without the package).
        let bin = scene.file("bin")
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        for tool in ["sh", "env", "true"] { symlink("/bin/\(tool)", "\(bin)/\(tool)") }
        let result = try user.run([product("run-overlay"), "--runtime", "native", "-o", scene.file("env.ext3"), "--", "true"],
                                  currentDirectory: scene.directory.path, environment: scene.configIsolation.merging(["PATH": bin]) { $1 })
        #expect(result.status == 1, "\(result)")
        #expect(result.stderr.contains("fuse-overlayfs not found: running without root needs it (install the fuse-overlayfs package), or run as root"), "\(result)")
        #expect(result.stderr.split(separator: "\n").count == 1)
        // fuse2fs, where the run needs it: asked for, or an image the built-in driver does not write.
        let asked = try user.run([product("run-overlay"), "--runtime", "native", "-o", scene.file("env.ext3"), "--", "true"],
                                 currentDirectory: scene.directory.path,
                                 environment: scene.configIsolation.merging(["PATH": bin, "OVERLAY_IMAGE_DRIVER": "fuse2fs"]) { $1 })
        #expect(asked.status == 1, "\(asked)")
        #expect(asked.stderr.contains("fuse2fs not found: running without root needs it (install the fuse2fs package), or run as root"), "\(asked)")
        #expect(asked.stderr.split(separator: "\n").count == 1)
    }
}

/// Waits until `condition` holds, at most `timeout` seconds.
func waitFor(timeout: TimeInterval, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        usleep(100_000)
    }
    return condition()
}

/// One test's directory, images and environment, and what of its runs is still there.
struct NativeScene {
    static let path = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
    let directory: TempDirectory
    /// A name unique to this test, for paths inside the overlay (never on the host).
    let mark: String

    init() throws {
        directory = try TempDirectory("native")
        mark = "overlaytest-" + (directory.path.split(separator: ".").last.map(String.init) ?? "x")
    }

    func file(_ name: String) -> String { directory.file(name) }

    /// No configuration file of this machine in play.
    var configIsolation: [String: String] {
        ["XDG_CONFIG_HOME": file(".config"), "OVERLAY_SYSTEM_CONFIG": file(".system-config"), "OVERLAY_RUNTIME": "native"]
    }

    func environment(_ extra: [String: String] = [:]) -> [String: String] {
        var env = ["PATH": Self.path, "HOME": directory.path, "LANG": "C.UTF-8"]
        for (key, value) in configIsolation { env[key] = value }
        for (key, value) in extra { env[key] = value }
        return env
    }

    @discardableResult
    func overlay(_ name: String, files: [String: String] = [:]) throws -> String {
        try FixtureImage.ext3(at: file(name), mebibytes: 16, files: files)
        return file(name)
    }

    /// An image file of `user`'s, upper/ and work/ theirs, with `opt/<mark>/readme.txt` ("mine")
    /// in a directory of theirs: as without --fakeroot in Apptainer, an ordinary user writes
    /// where they may (debugfs makes what it writes root's; the directory is given back).
    @discardableResult
    func userOverlay(_ name: String, for user: TestUser) throws -> String {
        try FixtureImage.ext3(at: file(name), mebibytes: 32, owner: (user.uid, user.gid),
                              files: ["opt/\(mark)/readme.txt": "mine\n"])
        chown(file(name), user.uid, user.gid)
        for field in ["uid \(user.uid)", "gid \(user.gid)"] {
            try TestSupport.run(["debugfs", "-w", "-R", "set_inode_field upper/opt/\(mark) \(field)", file(name)])
        }
        return file(name)
    }

    func run(_ tool: String, _ arguments: [String], environment extra: [String: String] = [:]) throws -> ProcessResult {
        try TestSupport.run([product(tool), "--runtime", "native"] + arguments, environment: environment(extra),
                            currentDirectory: directory.path, timeout: 60)
    }

    /// Starts run-overlay in the background (the caller signals it and waits).
    func start(_ arguments: [String]) throws -> SpawnedProcess {
        try SpawnedProcess([product("run-overlay"), "--runtime", "native"] + arguments, environment: environment(),
                           currentDirectory: directory.path)
    }

    /// A container tree (a sandbox directory, as `apptainer build --sandbox` makes): a
    /// statically linked busybox with its applets, and `/etc/<marker>` saying `text`.
    func containerTree(_ name: String, marker: String, text: String) throws -> String {
        let root = file(name)
        for dir in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
            try FileManager.default.createDirectory(atPath: "\(root)/\(dir)", withIntermediateDirectories: true)
        }
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: "\(root)/bin/busybox")
        for tool in ["sh", "cat", "ls", "id", "echo", "mkdir", "sleep", "find"] { symlink("busybox", "\(root)/bin/\(tool)") }
        try text.write(toFile: "\(root)/etc/\(marker)", atomically: true, encoding: .utf8)
        return root
    }

    /// A SIF made as Apptainer users get them: busybox in a squashfs system partition.
    func sifContainer() throws -> String {
        let root = try containerTree("rootfs", marker: "overlaytest-sif.txt", text: "inside the SIF\n")
        let squashfs = file("rootfs.squashfs")
        let made = try TestSupport.run(["mksquashfs", root, squashfs, "-quiet", "-noappend", "-all-root"], timeout: 60)
        guard made.status == 0 else { throw StandInError(description: "mksquashfs: \(made)") }
        let sif = file("base.sif")
        try "Bootstrap: scratch\n".write(toFile: file("def"), atomically: true, encoding: .utf8)
        for step in [["siftool", "new", sif],
                     ["siftool", "add", sif, file("def"), "--datatype", "1"],
                     ["siftool", "add", sif, squashfs, "--datatype", "4", "--parttype", "2", "--partfs", "1", "--partarch", "2"]] {
            let done = try TestSupport.run(step, timeout: 60)
            guard done.status == 0 else { throw StandInError(description: "\(step.joined(separator: " ")): \(done)") }
        }
        chmod(sif, 0o644)
        return sif
    }

    /// Processes whose command line or environment names this test's directory ("pid cmdline").
    func runningProcesses() -> [String] {
        let own = getpid()
        var found: [String] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid != own else { continue }
            let cmdline = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()
            let environ = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ"))) ?? Data()
            let command = String(decoding: cmdline, as: UTF8.self).replacingOccurrences(of: "\0", with: " ")
            if command.contains(directory.path) || String(decoding: environ, as: UTF8.self).contains(directory.path) {
                found.append("\(pid) \(command)")
            }
        }
        return found
    }

    /// Loop devices backed by this test's files, mounts and processes naming its directory;
    /// waits up to `waiting` seconds for them to go.
    func leftovers(waiting: TimeInterval = 3) -> [String] {
        var found: [String] = []
        _ = waitFor(timeout: waiting) {
            found = []
            for name in (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? [] where name.hasPrefix("loop") {
                if let backing = try? String(contentsOfFile: "/sys/block/\(name)/loop/backing_file", encoding: .utf8),
                   backing.hasPrefix(directory.path) {
                    found.append("loop device \(name): \(backing.trimmingCharacters(in: .whitespacesAndNewlines))")
                }
            }
            let mounts = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
            found += mounts.split(separator: "\n").filter { $0.contains(directory.path) }.map { "mount: \($0)" }
            found += runningProcesses().map { "process: \($0)" }
            return found.isEmpty
        }
        return found
    }
}
