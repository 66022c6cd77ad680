import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The built-in read-only driver on its own (`overlay --serve-image-read-only IMAGE DIR`): an
/// image packed from a tree reads back through it as the tree, every kind of entry, attribute
/// and extended attribute; it ends when its mount goes, leaving the image as it was.
@Suite("Built-in image driver", .serialized, .requiresRoot,
       .requires(executable: "getfattr", "from the attr package"), .requires(executable: "e2fsck"), .requires(executable: "debugfs"))
struct ImageDriverTests {
    /// One line per entry (path, kind, mode, owner, size but a directory's, links, mtime to the
    /// nanosecond, link target), the contents' checksums and every extended attribute, in path order.
    static func manifest(_ root: String) throws -> String {
        let script = """
            { find . -mindepth 1 -type d -printf '%P %y %m %U %G %n %T@\\n'
              find . -mindepth 1 ! -type d -printf '%P %y %m %U %G %s %n %T@ %l\\n'; } | LC_ALL=C sort
            find . -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum
            find . -mindepth 1 ! -type l -print0 | LC_ALL=C sort -z | xargs -0 getfattr -d -m - --absolute-names 2>/dev/null | grep -v '^$' || true
            """
        let result = try run(["sh", "-ec", script], currentDirectory: root)
        #expect(result.status == 0, "\(result)")
        return result.stdout
    }

    /// Starts the driver on `image` at `mountPoint` and waits for the mount.
    static func mount(_ image: String, at mountPoint: String) throws -> SpawnedProcess {
        var before = stat()
        stat(mountPoint, &before)
        let driver = try SpawnedProcess([product("overlay"), "--serve-image-read-only", image, mountPoint])
        let mounted = waitFor(timeout: 10) {
            var now = stat()
            return stat(mountPoint, &now) == 0 && now.st_dev != before.st_dev
        }
        #expect(mounted, "the driver did not mount \(image)")
        return driver
    }

    @Test func anImageReadsBackAsTheTreeItWasPackedFrom() throws {
        let directory = try TempDirectory("image-driver")
        let tree = directory.file("tree")
        let setup = """
            mkdir -p t/dir/sub t/many t/empty
            cd t
            echo hello > small.txt
            printf 'x%.0s' $(seq 1 5000) > two-blocks.txt
            # 6 MiB with a hole in the middle: direct, indirect and double-indirect blocks.
            head -c 2097152 /dev/urandom > sparse.bin
            truncate -s 4194304 sparse.bin
            head -c 2097152 /dev/urandom >> sparse.bin
            : > empty.txt
            ln -s small.txt short-link
            ln -s $(printf 'long/%.0s' $(seq 1 40))target long-link
            ln small.txt hard-link.txt
            mkfifo fifo
            mknod whiteout c 0 0
            mknod device c 4 64
            setfattr -n user.overlay.opaque -v y dir
            setfattr -n user.note -v "a note" small.txt
            setfattr -n trusted.overlay.opaque -v y dir/sub
            chmod 0700 dir/sub; chmod 4755 two-blocks.txt; chmod 0400 empty.txt
            chown 1234:5678 small.txt; chown -h 42:43 short-link
            touch -d '2021-02-03 04:05:06.123456789' dir/sub
            for i in $(seq 1 3000); do echo "file $i" > many/f$i; done
            """
        let made = try run(["sh", "-ec", setup], currentDirectory: directory.path)
        #expect(made.status == 0, "\(made)")
        try FileManager.default.moveItem(atPath: directory.file("t"), toPath: tree)
        let packed = try run([product("create-overlay"), "--from", tree, "-o", directory.file("image.ext3")])
        #expect(packed.status == 0, "\(packed)")
        let before = try Data(contentsOf: URL(fileURLWithPath: directory.file("image.ext3")))
        let mountPoint = directory.file("mnt")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)

        let driver = try Self.mount(directory.file("image.ext3"), at: mountPoint)
        let expected = try Self.manifest(tree)
        #expect(expected.contains("\nwhiteout c 644 0 0 0 1 ") && expected.contains("user.overlay.opaque=\"y\""), "\(expected)")
        let seen = try Self.manifest(mountPoint + "/upper")
        #expect(seen == expected, "\(zip(seen.split(separator: "\n"), expected.split(separator: "\n")).filter { $0.0 != $0.1 }.prefix(5))")
        // The device numbers, and a read from an offset in the middle of a block run.
        let device = try run(["stat", "-c", "%t %T", mountPoint + "/upper/device", mountPoint + "/upper/whiteout"])
        #expect(device.stdout == "4 40\n0 0\n", "\(device)")
        let middle = try run(["sh", "-c", "tail -c +4000000 \(mountPoint)/upper/sparse.bin | head -c 300000 | md5sum; tail -c +4000000 \(tree)/sparse.bin | head -c 300000 | md5sum"])
        let sums = middle.stdout.split(separator: "\n")
        #expect(sums.count == 2 && sums[0] == sums[1], "\(middle)")
        // Read-only: nothing can be written.
        let write = try run(["sh", "-c", "echo x > \(mountPoint)/upper/new.txt"])
        #expect(write.status != 0 && write.stderr.contains("Read-only file system"), "\(write)")

        // It ends when its mount goes, and the image is as it was.
        #expect(umount(mountPoint) == 0)
        let ended = driver.wait(timeout: 10)
        #expect(!ended.timedOut && ended.status == 0, "\(ended)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: directory.file("image.ext3"))) == before, "the image changed")
        #expect(try FixtureImage.isClean(directory.file("image.ext3")))
    }

    @Test func itEndsOnSIGTERMAndUnmounts() throws {
        let directory = try TempDirectory("image-driver")
        try FixtureImage.ext3(at: directory.file("image.ext3"), mebibytes: 16, files: ["srv/a.txt": "a\n"])
        let mountPoint = directory.file("mnt")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let driver = try Self.mount(directory.file("image.ext3"), at: mountPoint)
        #expect(try String(contentsOfFile: mountPoint + "/upper/srv/a.txt", encoding: .utf8) == "a\n")
        kill(driver.pid, SIGTERM)
        let ended = driver.wait(timeout: 10)
        #expect(!ended.timedOut, "\(ended)")
        let mounts = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        #expect(!mounts.contains(mountPoint), "still mounted")
    }

    /// A damaged inode claiming 8 TiB with one block of data: read at its start and its end
    /// (a hole, zeros) without the driver sizing anything by the claim.
    @Test func aFileClaimingAHugeSizeReadsAsItsBlocksAndHoles() throws {
        let directory = try TempDirectory("image-driver")
        try FixtureImage.ext3(at: directory.file("image.ext3"), mebibytes: 16, files: ["srv/a.txt": "abc\n"])
        let damaged = try run(["debugfs", "-w", "-R", "set_inode_field upper/srv/a.txt size 8796093022208", directory.file("image.ext3")])
        #expect(damaged.status == 0, "\(damaged)")
        let mountPoint = directory.file("mnt")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let driver = try Self.mount(directory.file("image.ext3"), at: mountPoint)
        let read = try run(["sh", "-c", "stat -c %s \(mountPoint)/upper/srv/a.txt; head -c 4 \(mountPoint)/upper/srv/a.txt; tail -c 3 \(mountPoint)/upper/srv/a.txt | od -An -tx1"], timeout: 30)
        #expect(read.stdout == "8796093022208\nabc\n 00 00 00\n", "\(read)")
        #expect(umount(mountPoint) == 0)
        let ended = driver.wait(timeout: 10)
        #expect(!ended.timedOut && ended.status == 0, "\(ended)")
    }

    /// An image with no extended attributes anywhere answers the first getxattr with ENOSYS,
    /// which the kernel keeps for the mount (the kernel's overlay then asks no file of the
    /// layer for `user.overlay.metacopy`): getfattr reads "not supported". An image holding
    /// one attribute keeps answering each file: the one it has, "no such attribute" elsewhere.
    @Test func anImageWithoutExtendedAttributesSaysSoOnce() throws {
        let directory = try TempDirectory("image-driver")
        try FixtureImage.ext3(at: directory.file("plain.ext3"), mebibytes: 16, files: ["srv/a.txt": "a\n", "srv/b.txt": "b\n"])
        try FixtureImage.ext3(at: directory.file("marked.ext3"), mebibytes: 16, files: ["srv/a.txt": "a\n", "srv/b.txt": "b\n"])
        let marked = try run(["debugfs", "-w", "-R", "ea_set upper/srv/b.txt user.note hello", directory.file("marked.ext3")])
        #expect(marked.status == 0, "\(marked)")
        let mountPoint = directory.file("mnt")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let query = """
            for f in a.txt b.txt; do getfattr -n user.overlay.metacopy srv/$f 2>&1; getfattr -n user.note --only-values srv/$f 2>&1; echo; done; cat srv/a.txt srv/b.txt
            """

        var driver = try Self.mount(directory.file("plain.ext3"), at: mountPoint)
        let plain = try run(["sh", "-c", query], currentDirectory: mountPoint + "/upper")
        #expect(plain.stdout == """
            srv/a.txt: user.overlay.metacopy: Operation not supported
            srv/a.txt: user.note: Operation not supported

            srv/b.txt: user.overlay.metacopy: Operation not supported
            srv/b.txt: user.note: Operation not supported

            a
            b

            """, "\(plain)")
        #expect(umount(mountPoint) == 0)
        var ended = driver.wait(timeout: 10)
        #expect(!ended.timedOut && ended.status == 0, "\(ended)")

        driver = try Self.mount(directory.file("marked.ext3"), at: mountPoint)
        let answered = try run(["sh", "-c", query], currentDirectory: mountPoint + "/upper")
        #expect(answered.stdout == """
            srv/a.txt: user.overlay.metacopy: No such attribute
            srv/a.txt: user.note: No such attribute

            srv/b.txt: user.overlay.metacopy: No such attribute
            hello
            a
            b

            """, "\(answered)")
        #expect(umount(mountPoint) == 0)
        ended = driver.wait(timeout: 10)
        #expect(!ended.timedOut && ended.status == 0, "\(ended)")
    }

    @Test func aMissingImageIsOneLine() throws {
        let directory = try TempDirectory("image-driver")
        let result = try run([product("overlay"), "--serve-image-read-only", directory.file("missing.ext3"), directory.path])
        #expect(result.status == 1)
        #expect(result.stderr == "overlay image driver: cannot open '\(directory.file("missing.ext3"))': No such file or directory\n", "\(result)")
    }
}
