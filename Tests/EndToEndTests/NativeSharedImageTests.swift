import Foundation
import Testing
import TestSupport

/// One image, written in one mode of the native runtime and read in the other: a deletion of a
/// lower layer's file and a replaced lower directory mean the same to the kernel overlayfs (root)
/// and to fuse-overlayfs (an ordinary user), and `overlay ls` shows them as what they are.
@Suite("Native runtime: images shared across modes", .serialized, .requiresRoot,
       .requires(executable: "mke2fs"), .requires(executable: "debugfs"), .requires(executable: "e2fsck"),
       .requires(executable: "fuse2fs"), .requires(executable: "fuse-overlayfs"))
struct NativeSharedImageTests {
    /// The job that deletes `gone.txt` (in the lower image) and replaces `dir` with a new one.
    static func writer(_ mark: String) -> [String] {
        ["sh", "-e", "-c", "rm /srv/\(mark)/gone.txt; rm -rf /srv/\(mark)/dir; mkdir /srv/\(mark)/dir; echo new > /srv/\(mark)/dir/f"]
    }

    /// The job that shows what is there, and any `.wh.` name.
    static func reader(_ mark: String) -> [String] {
        ["sh", "-c", "ls -A /srv/\(mark); echo --; ls -A /srv/\(mark)/dir; echo --; find /srv/\(mark) -name '.wh.*'"]
    }

    static let expected = "dir\nkept.txt\n--\nf\n--\n"

    /// A read-only lower image with `srv/<mark>/{gone.txt,kept.txt,dir/old1,dir/old2}` under
    /// upper/, all `user`'s (so that they may delete them in FUSE mode too).
    static func lowerImage(_ scene: NativeScene, for user: TestUser) throws -> String {
        let mark = scene.mark
        let files = ["gone.txt", "kept.txt", "dir/old1", "dir/old2"]
        try FixtureImage.ext3(at: scene.file("lower.ext3"), mebibytes: 16, owner: (user.uid, user.gid),
                              files: Dictionary(uniqueKeysWithValues: files.map { ("srv/\(mark)/\($0)", "old\n") }))
        for dir in ["srv", "srv/\(mark)", "srv/\(mark)/dir"] {
            for field in ["uid \(user.uid)", "gid \(user.gid)"] {
                try TestSupport.run(["debugfs", "-w", "-R", "set_inode_field upper/\(dir) \(field)", scene.file("lower.ext3")])
            }
        }
        return scene.file("lower.ext3")
    }

    static func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    func runAsUser(_ scene: NativeScene, _ user: TestUser, _ arguments: [String]) throws -> ProcessResult {
        try user.run([product("run-overlay"), "--runtime", "native"] + arguments,
                     currentDirectory: scene.directory.path, environment: scene.configIsolation, timeout: 60)
    }

    /// `overlay ls` (plain and -l) of the directory the jobs changed: the deletion and the
    /// opaque directory as such, no marker, no raw device.
    func expectListing(_ scene: NativeScene, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let image = scene.file("env.ext3")
        let plain = try TestSupport.run([product("overlay"), "ls", image, "/upper/srv/\(scene.mark)"])
        #expect(plain.status == 0, "\(plain)", sourceLocation: sourceLocation)
        #expect(plain.stdout == "dir/ (opaque: hides what lies below)\ngone.txt (deleted)\n", "\(plain)", sourceLocation: sourceLocation)
        let long = try TestSupport.run([product("overlay"), "ls", "-l", image, "/upper/srv/\(scene.mark)"])
        let lines = long.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 2, "\(long)", sourceLocation: sourceLocation)
        #expect(lines.first?.hasPrefix("drwx") == true && lines.first?.hasSuffix(" dir/ (opaque: hides what lies below)") == true,
                "\(long)", sourceLocation: sourceLocation)
        #expect(lines.last?.hasPrefix("w--------- ") == true && lines.last?.hasSuffix(" gone.txt (deleted)") == true,
                "\(long)", sourceLocation: sourceLocation)
        let inside = try TestSupport.run([product("overlay"), "ls", "-l", image, "/upper/srv/\(scene.mark)/dir"])
        #expect(inside.stdout.split(separator: "\n").count == 1 && inside.stdout.hasSuffix(" f\n"), "\(inside)", sourceLocation: sourceLocation)
    }

    @Test func writtenByAnOrdinaryUserReadByRoot() throws {
        let user = try TestUser.ensure()
        TestUser.openFuseToUsers()
        let scene = try NativeScene()
        let mark = scene.mark
        try scene.userOverlay("env.ext3", for: user)
        let lower = try Self.lowerImage(scene, for: user)
        let lowerBefore = try Self.bytes(lower)

        let written = try runAsUser(scene, user, ["-o", scene.file("env.ext3"), "-o", "\(lower):ro", "--"] + Self.writer(mark))
        #expect(written.status == 0, "\(written)")
        #expect(written.stderr.isEmpty, "\(written)")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
        #expect(try Self.bytes(lower) == lowerBefore, "the read-only image changed")
        // The user sees what they did, and so does root through the kernel overlayfs (the
        // image read-only: nothing of the reading run may change it).
        let again = try runAsUser(scene, user, ["-o", "\(lower):ro", "-o", scene.file("env.ext3") + ":ro", "--"] + Self.reader(mark))
        #expect(again.stdout == Self.expected, "\(again)")
        let imageBefore = try Self.bytes(scene.file("env.ext3"))
        let root = try scene.run("run-overlay", ["-o", "lower.ext3:ro", "-o", "env.ext3:ro", "--"] + Self.reader(mark))
        #expect(root.status == 0, "\(root)")
        #expect(root.stdout == Self.expected, "\(root)")
        #expect(try Self.bytes(scene.file("env.ext3")) == imageBefore, "a read-only image changed")
        try expectListing(scene)
        #expect(scene.leftovers(waiting: 5).isEmpty, "\(scene.leftovers())")
    }

    @Test func writtenByRootReadByAnOrdinaryUser() throws {
        let user = try TestUser.ensure()
        TestUser.openFuseToUsers()
        let scene = try NativeScene()
        let mark = scene.mark
        try scene.userOverlay("env.ext3", for: user)
        let lower = try Self.lowerImage(scene, for: user)
        let lowerBefore = try Self.bytes(lower)

        let written = try scene.run("run-overlay", ["-o", "env.ext3", "-o", "lower.ext3:ro", "--"] + Self.writer(mark))
        #expect(written.status == 0, "\(written)")
        #expect(written.stderr.isEmpty, "\(written)")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
        #expect(try Self.bytes(lower) == lowerBefore, "the read-only image changed")
        let root = try scene.run("run-overlay", ["-o", "lower.ext3:ro", "-o", "env.ext3:ro", "--"] + Self.reader(mark))
        #expect(root.stdout == Self.expected, "\(root)")
        // The user, read-only and then writable (their image: upper/ is theirs).
        let imageBefore = try Self.bytes(scene.file("env.ext3"))
        let reading = try runAsUser(scene, user, ["-o", "\(lower):ro", "-o", scene.file("env.ext3") + ":ro", "--"] + Self.reader(mark))
        #expect(reading.status == 0, "\(reading)")
        #expect(reading.stdout == Self.expected, "\(reading)")
        #expect(try Self.bytes(scene.file("env.ext3")) == imageBefore, "a read-only image changed")
        let writable = try runAsUser(scene, user, ["-o", scene.file("env.ext3"), "-o", "\(lower):ro", "--"] + Self.reader(mark))
        #expect(writable.stdout == Self.expected, "\(writable)")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
        try expectListing(scene)
        #expect(scene.leftovers(waiting: 5).isEmpty, "\(scene.leftovers())")
    }

    /// Written by root, read by an ordinary user on a container: the same through the built-in
    /// read-only driver and through fuse2fs (forced), under the kernel's overlay (`userxattr`)
    /// and under fuse-overlayfs (forced, as where the kernel refuses its overlay).
    @Test(.requires(executable: "busybox", "a static shell for the container tree"),
          arguments: ["builtin", "fuse2fs"], ["kernel", "fuse-overlayfs"])
    func writtenByRootReadByAnOrdinaryUserOnAContainer(driver: String, stack: String) throws {
        let user = try TestUser.ensure()
        TestUser.openFuseToUsers()
        let scene = try NativeScene()
        let mark = scene.mark
        try scene.userOverlay("env.ext3", for: user)
        let lower = try Self.lowerImage(scene, for: user)
        let written = try scene.run("run-overlay", ["-o", "env.ext3", "-o", "lower.ext3:ro", "--"] + Self.writer(mark))
        #expect(written.status == 0, "\(written)")
        let sandbox = try scene.containerTree("sandbox", marker: "overlaytest-sandbox.txt", text: "inside the sandbox\n")
        let before = try Self.bytes(scene.file("env.ext3"))
        let reader = Self.reader(mark)
        let job = reader.dropLast() + [reader.last! + "; echo --; while read -r d m t r; do [ \"$m\" = / ] && echo $t; done < /proc/self/mounts; true"]
        let reading = try user.run([product("run-overlay"), "--runtime", "native", "-o", "\(lower):ro", "-o", scene.file("env.ext3") + ":ro",
                                    "-c", sandbox, "--"] + job,
                                   currentDirectory: scene.directory.path,
                                   environment: scene.configIsolation.merging(["OVERLAY_FUSE_STACK": stack, "OVERLAY_IMAGE_DRIVER": driver]) { $1 },
                                   timeout: 60)
        #expect(reading.status == 0, "\(reading)")
        #expect(reading.stdout == Self.expected + "--\n" + (stack == "kernel" ? "overlay" : "fuse.fuse-overlayfs") + "\n", "\(reading)")
        #expect(try Self.bytes(scene.file("env.ext3")) == before, "a read-only image changed")
        #expect(scene.leftovers(waiting: 5).isEmpty, "\(scene.leftovers())")
    }

    /// An image holding fuse-overlayfs's markers (as Apptainer's FUSE mode leaves them) is not
    /// touched by a read-only run, and a writable run, even of a job that fails, rewrites them.
    @Test func markersAreRewrittenByTheNextWritableRunOnly() throws {
        let scene = try NativeScene()
        let mark = scene.mark
        let user = try TestUser.ensure()
        let lower = try Self.lowerImage(scene, for: user)
        try scene.overlay("env.ext3", files: ["srv/\(mark)/.wh.gone.txt": "", "srv/\(mark)/dir/.wh..wh..opq": "", "srv/\(mark)/dir/f": "new\n"])
        _ = lower
        let before = try Self.bytes(scene.file("env.ext3"))
        let reading = try scene.run("run-overlay", ["-o", "lower.ext3:ro", "-o", "env.ext3:ro", "--", "true"])
        #expect(reading.status == 0, "\(reading)")
        #expect(try Self.bytes(scene.file("env.ext3")) == before, "a read-only image changed")
        let failing = try scene.run("run-overlay", ["-o", "env.ext3", "-o", "lower.ext3:ro", "--", "sh", "-c", "exit 3"])
        #expect(failing.status == 3, "\(failing)")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
        let root = try scene.run("run-overlay", ["-o", "lower.ext3:ro", "-o", "env.ext3:ro", "--"] + Self.reader(mark))
        #expect(root.stdout == Self.expected, "\(root)")
        try expectListing(scene)
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
    }
}
