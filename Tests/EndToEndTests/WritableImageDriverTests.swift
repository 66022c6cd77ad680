import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The built-in driver's writable mode on its own (`overlay --serve-image-writable IMAGE DIR`),
/// with the kernel's ext3 as the oracle: the same changes made through the driver and through a
/// loop mount of the same fresh image give the same tree; the image the driver wrote is clean
/// to e2fsck and reads back through the kernel as that tree.
@Suite("Built-in image driver, writable", .serialized, .requiresRoot,
       .requires(executable: "getfattr", "from the attr package"), .requires(executable: "e2fsck"),
       .requires(executable: "python3"), .requires(executable: "losetup"))
struct WritableImageDriverTests {
    /// Every kind of change a job or an overlay above makes, each where it has its own path
    /// through the code: a directory of 20,000 entries grown, thinned and refilled, renames
    /// with each flag of renameat2, a file written after its last name went.
    static let changes = #"""
        mkdir -p d/sub many empty
        echo hello > d/f
        printf 'x%.0s' $(seq 1 5000) > two-blocks
        seq 1 400000 > big
        ln d/f d/hard
        ln -s f d/short
        ln -s $(printf 'long/%.0s' $(seq 1 40))target d/long
        mkfifo d/fifo
        mknod d/whiteout c 0 0
        mknod d/device c 300 70000
        mknod d/old-device b 8 1
        chmod 4750 two-blocks; chown 1234:5678 d/f; chown -h 42:43 d/short
        touch -d '2021-02-03 04:05:06.123456789' d/f
        touch -d '2500-01-01' d/late; touch -d '1800-01-01' d/early
        setfattr -n user.note -v "a note" d/f
        setfattr -n trusted.overlay.opaque -v y d/sub
        setfattr -n user.gone -v 1 d; setfattr -x user.gone d
        setfattr -n user.big -v "$(printf 'v%.0s' $(seq 1 2000))" d
        truncate -s 10000000 sparse; echo tail >> sparse
        cp big shrunk; truncate -s 5000 shrunk
        i=0; while [ $i -lt 20000 ]; do i=$((i+1)); echo "file $i" > many/f$i; done
        rm many/f1*
        i=0; while [ $i -lt 500 ]; do i=$((i+1)); echo "again $i" > many/g$i; done
        mv d/sub empty/moved
        mv two-blocks d/f2
        mv -T d/hard d/short
        mkdir r1 r2; touch r1/in; mv -T r1 r2
        python3 - <<'EOF'
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def rename2(a, b, flags):
            if libc.renameat2(-100, a.encode(), -100, b.encode(), flags) != 0:
                raise OSError(ctypes.get_errno(), "renameat2 %s %s %d" % (a, b, flags))
        os.mkdir("xdir"); open("xdir/inside", "w").write("in xdir\n")
        open("empty/xfile", "w").write("xfile\n")
        rename2("xdir", "empty/xfile", 2)          # RENAME_EXCHANGE, across directories
        open("w1", "w").write("w1\n")
        rename2("w1", "w1-moved", 4)               # RENAME_WHITEOUT
        os.setxattr("d/f2", b"user.\xffodd", b"not UTF-8")
        try:
            rename2("w1-moved", "d/f2", 1)         # RENAME_NOREPLACE onto an existing name
            print("no EEXIST")
        except OSError as e:
            assert e.errno == 17, e
        # The largest file size (found by truncating), written down: the same on both sides.
        fd = os.open("huge", os.O_RDWR | os.O_CREAT)
        low, high = 0, 1 << 50
        while low < high:
            middle = (low + high + 1) // 2
            try:
                os.ftruncate(fd, middle); low = middle
            except OSError as e:
                assert e.errno == 27, e; high = middle - 1
        os.ftruncate(fd, low - 1)
        assert os.pwrite(fd, b"xy", low - 1) == 1
        try:
            os.pwrite(fd, b"x", low); print("wrote past the largest size")
        except OSError as e:
            assert e.errno == 27, e
        os.ftruncate(fd, 0); os.write(fd, b"%d\n" % low); os.close(fd)
        for call in (os.stat, os.mkdir, lambda p: os.link("d/f", p), lambda p: os.rename("d/f", p)):
            try:
                call("n" * 300); print("a name of 300 bytes")
            except OSError as e:
                assert e.errno == 36, e                # ENAMETOOLONG
        fd = os.open("orphan", os.O_RDWR | os.O_CREAT, 0o600)
        os.unlink("orphan")
        os.write(fd, b"still here " * 100000)
        os.lseek(fd, 0, 0)
        assert os.read(fd, 11) == b"still here ", "the unlinked file lost its data"
        os.close(fd)
        EOF
        rmdir empty/moved
        """#

    /// One line per entry (path, kind, mode, owner, size but a directory's, links, link target,
    /// device numbers), the contents' checksums, every extended attribute, and the time set by hand.
    static func manifest(_ root: String) throws -> String {
        let script = """
            { find . -mindepth 1 -type d -printf '%P %y %m %U %G %n\\n'
              find . -mindepth 1 ! -type d -printf '%P %y %m %U %G %s %n %l\\n'; } | LC_ALL=C sort
            find . -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum
            find . -mindepth 1 ! -type l -print0 | LC_ALL=C sort -z | xargs -0 getfattr -d -m - --absolute-names 2>/dev/null | grep -v '^$' || true
            stat -c '%t %T' d/device d/old-device d/whiteout; stat -c %y d/f d/late d/early
            """
        let result = try run(["sh", "-ec", script], currentDirectory: root, timeout: 120)
        #expect(result.status == 0, "\(result)")
        return result.stdout
    }

    static func firstDifferences(_ a: String, _ b: String) -> String {
        let left = a.split(separator: "\n"), right = b.split(separator: "\n")
        return "\(left.count) vs \(right.count) lines; " + zip(left, right).filter { $0.0 != $0.1 }.prefix(5).map { "\($0.0) | \($0.1)" }.joined(separator: "; ")
    }

    static func mountWritable(_ image: String, at mountPoint: String) throws -> SpawnedProcess {
        var before = stat()
        stat(mountPoint, &before)
        let driver = try SpawnedProcess([product("overlay"), "--serve-image-writable", image, mountPoint])
        let mounted = waitFor(timeout: 10) {
            var now = stat()
            return stat(mountPoint, &now) == 0 && now.st_dev != before.st_dev
        }
        #expect(mounted, "the driver did not mount \(image)")
        return driver
    }

    static func withLoopMount<T>(_ image: String, at mountPoint: String, readOnly: Bool = false, _ body: () throws -> T) throws -> T {
        let mounted = try run(["mount", "-t", "ext3", "-o", readOnly ? "loop,ro" : "loop", image, mountPoint])
        #expect(mounted.status == 0, "\(mounted)")
        defer { _ = try? run(["umount", mountPoint]) }
        return try body()
    }

    @Test func changesThroughTheDriverMatchTheKernelsExt3AndPersist() throws {
        let directory = try TempDirectory("writable-driver")
        let ours = directory.file("ours.ext3"), kernels = directory.file("kernel.ext3")
        try FixtureImage.ext3(at: ours, mebibytes: 128)
        try FileManager.default.copyItem(atPath: ours, toPath: kernels)
        let mountPoint = directory.file("mnt")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)

        let expected: String = try Self.withLoopMount(kernels, at: mountPoint) {
            let made = try run(["sh", "-ec", Self.changes], currentDirectory: mountPoint + "/upper", timeout: 300)
            #expect(made.status == 0 && made.stdout.isEmpty, "\(made)")
            return try Self.manifest(mountPoint + "/upper")
        }
        #expect(expected.contains("d/whiteout c 644 0 0 0 1") && expected.contains("\n12c 11170\n"), "\(expected.suffix(300))")

        let driver = try Self.mountWritable(ours, at: mountPoint)
        let made = try run(["sh", "-ec", Self.changes], currentDirectory: mountPoint + "/upper", timeout: 300)
        #expect(made.status == 0 && made.stdout.isEmpty, "\(made)")
        let seen = try Self.manifest(mountPoint + "/upper")
        #expect(seen == expected, "\(Self.firstDifferences(seen, expected))")
        // Marked "not clean" on disk while it is being changed, "clean" once the driver is done.
        let state = try run(["dumpe2fs", "-h", ours]).stdout.split(separator: "\n").first { $0.hasPrefix("Filesystem state:") }
        #expect(state?.hasSuffix(" not clean") == true, "\(String(describing: state))")
        #expect(umount(mountPoint) == 0)
        let ended = driver.wait(timeout: 20)
        #expect(!ended.timedOut && ended.status == 0, "\(ended)")

        // Clean, and the same tree through the kernel's ext3.
        let check = try run(["e2fsck", "-fn", ours])
        #expect(check.status == 0, "\(check.stdout)")
        #expect(try FixtureImage.isClean(ours))
        let reread = try Self.withLoopMount(ours, at: mountPoint, readOnly: true) { try Self.manifest(mountPoint + "/upper") }
        #expect(reread == expected, "\(Self.firstDifferences(reread, expected))")
    }

    /// A full image fails the write that does not fit with ENOSPC, the file keeps what was
    /// written before it, and the image stays clean; an image with features the driver does
    /// not write is refused in one line, untouched.
    @Test func aFullImageFailsTheWriteAndStaysClean() throws {
        let directory = try TempDirectory("writable-driver")
        let image = directory.file("small.ext3")
        try FixtureImage.ext3(at: image, mebibytes: 16)
        let mountPoint = directory.file("mnt")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let driver = try Self.mountWritable(image, at: mountPoint)
        let script = """
            import os, errno
            fd = os.open("upper/big", os.O_WRONLY | os.O_CREAT)
            total = 0
            try:
                while total < (64 << 20):
                    total += os.write(fd, b"x" * (1 << 20))
                print("no error")
            except OSError as e:
                print(errno.errorcode[e.errno], os.fstat(fd).st_size == total, total > (8 << 20))
            os.close(fd)
            """
        let full = try run(["python3", "-c", script], currentDirectory: mountPoint, timeout: 60)
        #expect(full.stdout == "ENOSPC True True\n", "\(full)")
        #expect(umount(mountPoint) == 0)
        #expect(!driver.wait(timeout: 20).timedOut)
        let check = try run(["e2fsck", "-fn", image])
        #expect(check.status == 0, "\(check.stdout)")
        #expect(try FixtureImage.isClean(image))

        // ext4, and ext3 without file types in its directory entries: refused, untouched.
        for (name, options) in [("ext4.img", ["-t", "ext4"]), ("untyped.img", ["-t", "ext3", "-O", "^filetype"])] {
            let other = directory.file(name)
            let made = try run(["mke2fs", "-q"] + options + ["-F", other, "16M"])
            #expect(made.status == 0, "\(made)")
            let before = try Data(contentsOf: URL(fileURLWithPath: other))
            let refused = try run([product("overlay"), "--serve-image-writable", other, mountPoint], timeout: 20)
            #expect(refused.status == 1 && refused.stderr.split(separator: "\n").count == 1
                    && refused.stderr.contains("has ext2 features this driver does not write"), "\(name): \(refused)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: other)) == before, "the refused image \(name) changed")
        }
    }

    /// Running out of room where libext2fs would fail half-way: a write that needs an indirect
    /// block when one block is left, a rename that needs a whiteout when no inode is left.
    /// The write and the rename fail (ENOSPC), nothing else changes, and e2fsck finds nothing.
    @Test func runningOutHalfWayLeavesTheImageClean() throws {
        let directory = try TempDirectory("writable-driver")
        let image = directory.file("small.ext3")
        try FixtureImage.ext3(at: image, mebibytes: 8)
        let mountPoint = directory.file("mnt")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let driver = try Self.mountWritable(image, at: mountPoint)
        let script = """
            import ctypes, errno, os
            os.chdir("upper")
            def fill(path, piece):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                try:
                    while True:
                        os.write(fd, b"f" * piece)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                finally:
                    os.close(fd)
            # 12 blocks and 1 block, freed once the image is full: 13 blocks free, so that a new
            # file's 13th block (the first behind an indirect block) finds one block left.
            blk = os.statvfs(".").f_bsize
            with open("twelve", "wb") as f: f.write(b"t" * (12 * blk))
            with open("one", "wb") as f: f.write(b"o" * blk)
            fill("filler", 1 << 20)
            fill("filler", blk)
            os.unlink("twelve"); os.unlink("one")
            fill("last", blk)
            size = os.stat("last").st_size
            assert size % blk == 0 and size <= 13 * blk, size
            with open("last", "rb") as f: assert f.read() == b"f" * size
            # No inode left: a rename that leaves a whiteout fails, both names as they were.
            libc = ctypes.CDLL(None, use_errno=True)
            os.unlink("filler")
            os.mkdir("many")
            n = 0
            try:
                while True:
                    open("many/%d" % n, "w").close(); n += 1
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
            os.unlink("many/0"); open("source", "w").write("source")
            r = libc.renameat2(-100, b"source", -100, b"target", 4)
            assert r != 0 and ctypes.get_errno() == errno.ENOSPC, (r, ctypes.get_errno())
            assert os.path.exists("source") and not os.path.exists("target")
            print("ok", n)
            """
        let result = try run(["python3", "-c", script], currentDirectory: mountPoint, timeout: 120)
        #expect(result.status == 0 && result.stdout.hasPrefix("ok "), "\(result)")
        #expect(umount(mountPoint) == 0)
        #expect(!driver.wait(timeout: 20).timedOut)
        let check = try run(["e2fsck", "-fn", image])
        #expect(check.status == 0, "\(check.stdout)")
        #expect(try FixtureImage.isClean(image))
    }

    /// A directory removed while a process still has it open, then a new one made: the new
    /// one gets an inode of its own (the old number stays taken until the kernel forgets the
    /// old directory) and works; the old one lists as removed.
    @Test func anInodeStillHeldByTheKernelIsNotReused() throws {
        let directory = try TempDirectory("writable-driver")
        let image = directory.file("image.ext3")
        try FixtureImage.ext3(at: image, mebibytes: 16)
        let mountPoint = directory.file("mnt")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let driver = try Self.mountWritable(image, at: mountPoint)
        let script = """
            import os
            os.chdir("upper")
            os.mkdir("d")
            fd = os.open("d", os.O_RDONLY)
            held = os.stat("d").st_ino
            os.rmdir("d")
            for name in ("e", "f"):
                os.mkdir(name)
                assert os.stat(name).st_ino != held, (name, held)
                with open(name + "/x", "w") as f: f.write(name)
                assert os.listdir(name) == ["x"] and open(name + "/x").read() == name
            try:
                assert os.listdir(fd) == [], "the removed directory lists entries"
            except FileNotFoundError:
                pass
            os.close(fd)
            open("g", "w").close(); os.unlink("g")
            print("ok")
            """
        let result = try run(["python3", "-c", script], currentDirectory: mountPoint, timeout: 60)
        #expect(result.status == 0 && result.stdout == "ok\n", "\(result)")
        #expect(umount(mountPoint) == 0)
        #expect(!driver.wait(timeout: 20).timedOut)
        let check = try run(["e2fsck", "-fn", image])
        #expect(check.status == 0, "\(check.stdout)")
        #expect(try FixtureImage.isClean(image))
    }
}
