import Foundation
import Testing
import TestSupport

/// create-overlay and overlay resize on a filesystem without unnamed files (O_TMPFILE): a
/// fuse2fs mount, whose driver has no tmpfile operation. They build the image in a hidden
/// temporary file beside the target, locked while it is built, and remove the unlocked ones
/// that killed runs left.
@Suite(.serialized, .requiresRoot, .requires(executable: "fuse2fs"), .requires(executable: "python3"),
       .requires(executable: "e2fsck"), .requires(executable: "dumpe2fs"))
struct NamedTemporaryTests {
    @Test func createAndResizeWhereThereAreNoUnnamedFiles() throws {
        let dir = try TempDirectory("no-tmpfile")
        let backing = dir.file("backing.ext2")
        let made = try run(["mke2fs", "-q", "-F", "-t", "ext2", backing, "300M"])
        try #require(made.status == 0, "\(made)")
        let mountPoint = dir.file("m")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let mounted = try run(["fuse2fs", backing, mountPoint])
        try #require(mounted.status == 0, "\(mounted)")
        defer { _ = try? run(["fusermount", "-u", mountPoint]) }
        let probe = try run(["python3", "-c", "import os, sys\ntry:\n os.open(sys.argv[1], os.O_TMPFILE | os.O_RDWR, 0o600)\nexcept OSError as e:\n sys.exit(e.errno)", mountPoint])
        try #require(probe.status == Int32(EOPNOTSUPP), "the premise: no unnamed files on this mount (\(probe))")

        // A killed run's leftover (unlocked) goes; a live run's (locked) stays.
        let abandoned = mountPoint + "/.env.ext3.tmp-0123456789ab"
        let building = mountPoint + "/.env.ext3.tmp-ba9876543210"
        for path in [abandoned, building] { #expect(FileManager.default.createFile(atPath: path, contents: Data("x".utf8))) }
        let holder = try LockHolder(building, write: true)
        defer { holder.release() }
        let image = mountPoint + "/env.ext3"
        let created = try run([product("create-overlay"), "-s", "64", "-n", "1", "-o", image])
        #expect(created.status == 0, "\(created)")
        #expect(CreateOracle.listing(mountPoint).sorted() == [".env.ext3.tmp-ba9876543210", "env.ext3", "lost+found"])
        #expect(try CreateOracle.fsckClean(image))

        // A rebuild goes the same way, and renames its hidden file over the image.
        #expect(FileManager.default.createFile(atPath: abandoned, contents: Data("x".utf8)))
        try #require(chmod(image, 0o600) == 0)
        let resized = try run([product("overlay"), "resize", image, "-s", "128"])
        #expect(resized.status == 0, "\(resized)")
        #expect(resized.stdout.contains("inodes 1,008 -> 2,016"), "\(resized.stdout)")
        #expect(CreateOracle.listing(mountPoint).sorted() == [".env.ext3.tmp-ba9876543210", "env.ext3", "lost+found"])
        #expect(try CreateOracle.fsckClean(image))
        #expect(try CreateOracle.superblock(image)["Inode count"] == "2016")
        #expect(CreateOracle.fileStat(image).map { $0.st_mode & 0o7777 } == 0o600)
    }
}
