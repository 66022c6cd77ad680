import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A small tree with every kind of entry create-overlay --from must keep, and a view of a tree
/// (from lstat, readlink, the bytes, and getfattr as the xattr oracle) to compare two trees.
enum PackFixture {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    static func must(_ ok: Bool, _ what: @autoclosure () -> String) throws {
        if !ok { throw Failure(description: "\(what()): \(String(cString: strerror(errno)))") }
    }

    static func write(_ path: String, _ bytes: [UInt8]) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    static func setTimes(_ path: String, seconds: Int, nanoseconds: Int) throws {
        var times = [timespec(tv_sec: seconds, tv_nsec: nanoseconds), timespec(tv_sec: seconds, tv_nsec: nanoseconds)]
        try must(utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) == 0, "utimensat \(path)")
    }

    static func setfattr(_ path: String, _ name: String, _ value: String) throws {
        let result = try run(["setfattr", "-h", "-n", name, "-v", value, path], timeout: 30)
        if result.status != 0 { throw Failure(description: "setfattr \(name) \(path): \(result)") }
    }

    /// A Unix socket bound at `path` (the file stays after the socket is closed).
    static func makeSocket(_ path: String) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        try must(fd >= 0, "socket")
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.prefix(raw.count - 1).enumerated() { raw[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try must(bound == 0, "bind \(path)")
    }

    /// Builds the tree at `root` (which must not exist). Needs root (devices, owners, trusted.*).
    /// `sockets: false` leaves the socket out (tar cannot hold one).
    static func make(_ root: String, sockets: Bool = true) throws {
        var generator = SeededGenerator(seed: 7)
        func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) } }
        let fm = FileManager.default
        try fm.createDirectory(atPath: root + "/dir with spaces/ünïcödé ✓", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: root + "/many/a/b", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: root + "/shared", withIntermediateDirectories: true)
        // A few hundred small files in nested directories.
        for index in 0..<240 {
            let directory = root + "/many" + (index % 3 == 0 ? "" : index % 3 == 1 ? "/a" : "/a/b")
            try write(directory + "/file \(index).txt", bytes(index * 37 % 5000))
        }
        try write(root + "/empty", [])
        try write(root + "/one block", bytes(4096))
        try write(root + "/dir with spaces/ünïcödé ✓/naïve file", bytes(10_000))
        // Files past the 12 direct blocks (their data copied by the kernel, their indirect
        // block written with the directories), and a directory of more than 12 blocks.
        try write(root + "/medium.bin", bytes(100 * 4096 + 77))
        try write(root + "/batch limit.bin", bytes(256 * 4096))
        try write(root + "/above limit.bin", bytes(256 * 4096 + 1))
        try fm.createDirectory(atPath: root + "/wide", withIntermediateDirectories: true)
        for index in 0..<250 {
            try write(root + "/wide/" + String(repeating: "n", count: 200) + " \(index)", [])
        }
        // 1,300 blocks: direct, single and double indirect blocks.
        try write(root + "/large.bin", bytes(1300 * 4096 + 123))
        // A sparse file: 8 MiB with data only at 1 MiB and at the end.
        let sparse = root + "/sparse.img"
        let fd = open(sparse, O_CREAT | O_WRONLY, 0o644)
        try must(fd >= 0, "create sparse file")
        let middle = bytes(5000)
        let end = bytes(100)
        _ = middle.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 1 << 20) }
        _ = end.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, (8 << 20) - 100) }
        close(fd)
        // Hard links: a pair in different directories.
        try write(root + "/shared/original", bytes(3000))
        try must(link(root + "/shared/original", root + "/many/a/hard link") == 0, "link")
        // Symlinks: fast (in the inode) and slow (a block), and a dangling one.
        try must(symlink("../one block", root + "/shared/short link") == 0, "symlink")
        try must(symlink(String(repeating: "long/", count: 30) + "target", root + "/shared/long link") == 0, "symlink")
        try must(symlink("/nowhere/at/all", root + "/dangling") == 0, "symlink")
        // FIFO, devices, socket.
        try must(mkfifo(root + "/fifo", 0o640) == 0, "mkfifo")
        try must(mknod(root + "/null-like", S_IFCHR | 0o666, device(1, 3)) == 0, "mknod c")
        try must(mknod(root + "/disk-like", S_IFBLK | 0o660, device(259, 70_000)) == 0, "mknod b")
        if sockets { try makeSocket(root + "/socket") }
        // Special permission bits and odd owners.
        try must(chmod(root + "/one block", 0o4755) == 0, "chmod setuid")
        try must(chmod(root + "/shared", 0o2775) == 0, "chmod setgid")
        try must(chmod(root + "/many", 0o1777) == 0, "chmod sticky")
        try must(chmod(root + "/empty", 0o000) == 0, "chmod 000")
        try must(lchown(root + "/empty", 1234, 5678) == 0, "chown")
        try must(lchown(root + "/shared/long link", 100_000, 200_000) == 0, "lchown symlink")
        try must(lchown(root + "/dir with spaces", 4_000_000, 65_534) == 0, "chown dir")
        // Extended attributes: small ones (in the inode), a big one (an attribute block), trusted.*.
        try setfattr(root + "/one block", "user.note", "hello")
        try setfattr(root + "/one block", "user.other", "0x00ff10")
        try setfattr(root + "/many/a", "user.big", String(repeating: "x", count: 600))
        try setfattr(root + "/shared/original", "trusted.origin", "packed")
        try setfattr(root + "/dir with spaces/ünïcödé ✓/naïve file", "user.ünï", "✓")
        // Times with nanoseconds, one past 2038, symlinks included; directories last.
        var stamp = 1_600_000_000
        for entry in try entries(root).reversed() {
            stamp += 3_601
            try setTimes(root + "/" + entry, seconds: stamp, nanoseconds: (stamp * 7919) % 1_000_000_000)
        }
        try setTimes(root + "/large.bin", seconds: 4_102_444_800, nanoseconds: 999_999_999)  // 2100-01-01
    }

    /// Relative paths of everything under `root`, parents before children, sorted.
    static func entries(_ root: String) throws -> [String] {
        guard let enumerator = FileManager.default.enumerator(atPath: root) else { throw Failure(description: "cannot list \(root)") }
        var result: [String] = []
        while let next = enumerator.nextObject() as? String { result.append(next) }
        return result.sorted()
    }

    struct Entry: Equatable, CustomStringConvertible {
        var type: UInt32
        var mode: UInt32
        var uid: UInt32
        var gid: UInt32
        var mtime: Int
        var mtimeNanoseconds: Int
        var size: Int64?
        var links: UInt
        var rdev: UInt64
        var target: String?
        var content: Data?
        var xattrs: [String]

        var description: String {
            "type \(String(type, radix: 8)) mode \(String(mode, radix: 8)) \(uid):\(gid) mtime \(mtime).\(mtimeNanoseconds) "
                + "size \(size.map(String.init) ?? "-") links \(links) rdev \(rdev) target \(target ?? "-") "
                + "content \(content.map { "\($0.count) bytes" } ?? "-") xattrs \(xattrs)"
        }
    }

    /// Every entry under `root` as stat, readlink, the bytes and getfattr see it.
    static func snapshot(_ root: String) throws -> [String: Entry] {
        var result: [String: Entry] = [:]
        let allXattrs = try xattrs(root)
        for relative in try entries(root) {
            let path = root + "/" + relative
            var info = stat()
            try must(lstat(path, &info) == 0, "lstat \(path)")
            let type = info.st_mode & S_IFMT
            var target: String? = nil
            if type == S_IFLNK { target = try FileManager.default.destinationOfSymbolicLink(atPath: path) }
            let content = type == S_IFREG ? try Data(contentsOf: URL(fileURLWithPath: path)) : nil
            let xattrs = allXattrs[path, default: []]
            result[relative] = Entry(
                type: type, mode: info.st_mode & 0o7777, uid: info.st_uid, gid: info.st_gid,
                mtime: info.st_mtim.tv_sec, mtimeNanoseconds: info.st_mtim.tv_nsec,
                size: type == S_IFDIR ? nil : Int64(info.st_size), links: UInt(info.st_nlink),
                rdev: UInt64(info.st_rdev), target: target, content: content, xattrs: xattrs)
        }
        return result
    }

    /// Every extended attribute under `root` (symlinks not followed), by path, as one recursive
    /// getfattr dump shows them (`name=0x...` lines, sorted).
    static func xattrs(_ root: String) throws -> [String: [String]] {
        let dump = try run(["getfattr", "-R", "-P", "-h", "-d", "-m", "-", "-e", "hex", "--absolute-names", "--", root], timeout: 60)
        try must(dump.status == 0, "getfattr -R \(root): \(dump.stderr)")
        var result: [String: [String]] = [:]
        var current: String? = nil
        for line in dump.stdout.split(separator: "\n") {
            if line.hasPrefix("# file: ") {
                current = unescape(String(line.dropFirst("# file: ".count)))
            } else if let current, !line.isEmpty, !line.hasPrefix("#") {
                result[current, default: []].append(String(line))
            }
        }
        return result.mapValues { $0.sorted() }
    }

    /// getfattr's file names with their `\ooo` escapes (spaces, non-ASCII bytes) undone.
    static func unescape(_ text: String) -> String {
        var bytes: [UInt8] = []
        let input = Array(text.utf8)
        var index = 0
        while index < input.count {
            if input[index] == UInt8(ascii: "\\"), index + 3 < input.count,
               let value = UInt8(String(decoding: input[(index + 1)...(index + 3)], as: UTF8.self), radix: 8) {
                bytes.append(value)
                index += 4
            } else {
                bytes.append(input[index])
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// glibc's makedev (a macro Swift does not import).
    static func device(_ major: UInt64, _ minor: UInt64) -> dev_t {
        dev_t(((major & 0xFFFF_F000) << 32) | ((major & 0xFFF) << 8) | ((minor & 0xFFFF_FF00) << 12) | (minor & 0xFF))
    }

    /// Allocated bytes of a file (st_blocks x 512).
    static func allocated(_ path: String) -> Int64 {
        var info = stat()
        guard lstat(path, &info) == 0 else { return -1 }
        return Int64(info.st_blocks) * 512
    }
}

/// A kernel loop mount (read-only) of an image under a test's directory; unmounted by `close()`.
final class ReadOnlyMount {
    let image: String
    let point: String
    private var mounted = false

    init(_ image: String, at point: String) throws {
        self.image = image
        self.point = point
        try FileManager.default.createDirectory(atPath: point, withIntermediateDirectories: true)
        let result = try run(["mount", "-t", "ext3", "-o", "loop,ro", image, point], timeout: 60)
        guard result.status == 0 else { throw PackFixture.Failure(description: "mount \(image): \(result)") }
        mounted = true
    }

    func close() throws {
        guard mounted else { return }
        mounted = false
        let result = try run(["umount", point], timeout: 60)
        guard result.status == 0 else { throw PackFixture.Failure(description: "umount \(point): \(result)") }
    }

    /// Loop devices still backed by the image: none once close() has returned and the kernel
    /// has let go of the autoclear device (it does so shortly after the unmount; waits up to 10 s).
    var loopDevices: String {
        var left = ""
        for _ in 0..<100 {
            left = (try? run(["losetup", "-j", image], timeout: 30).stdout) ?? ""
            if left.isEmpty { break }
            usleep(100_000)
        }
        return left
    }

    deinit { if mounted { _ = try? run(["umount", "-l", point], timeout: 60) } }
}

/// A small deterministic random generator (SplitMix64), so the tree is the same every run.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A number in 0..<bound (the remainder of the next value).
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}
