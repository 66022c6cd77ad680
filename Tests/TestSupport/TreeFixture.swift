import Foundation

/// An ext3 image (mke2fs + debugfs, independent of the code under test) holding one of each
/// kind of entry under upper/, with known owners, modes and times.
public enum TreeFixture {
    /// Content of /upper/opt/tool/data.bin: more than one read chunk, not a multiple of a block.
    public static let bigSize = 3 * 1_048_576 + 123
    public static let longTarget = String(repeating: "long/", count: 16) + "target"
    /// mtime of readme.txt: 2024-05-01 12:34:56.123456789 UTC.
    public static let readmeSeconds: Int64 = 1_714_566_896
    public static let readmeNanoseconds: UInt32 = 123_456_789

    public static func bigContent() -> [UInt8] {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        var words = [UInt64](repeating: 0, count: bigSize / 8 + 1)
        for index in words.indices {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            words[index] = state
        }
        return words.withUnsafeBytes { Array($0.prefix(bigSize)) }
    }

    public static func make(at path: String) throws {
        try FixtureImage.mkfs(path, mebibytes: 32, type: "ext3")
        let staging = FileManager.default.temporaryDirectory.appendingPathComponent("tree-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: staging, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: staging) }
        let small = staging.appendingPathComponent("small").path
        let big = staging.appendingPathComponent("big").path
        try "hello from the overlay\n".write(toFile: small, atomically: true, encoding: .utf8)
        try Data(bigContent()).write(to: URL(fileURLWithPath: big))
        let commands = [
            "mkdir upper", "mkdir work", "mkdir upper/opt", "mkdir upper/opt/tool", "mkdir \"upper/with space\"",
            "write \(small) upper/opt/tool/readme.txt",
            "write \(big) upper/opt/tool/data.bin",
            "write \(small) \"upper/with space/é.txt\"",
            "cd upper/opt/tool",
            "symlink short readme.txt",
            "symlink long \(longTarget)",
            "mknod fifo p",
            "mknod null c 1 3",
            "cd /",
            "set_inode_field upper/opt/tool/fifo mode 010640",
            "set_inode_field upper/opt/tool/null mode 020666",
            "set_inode_field upper/opt/tool/readme.txt mode 0104755",
            "set_inode_field upper/opt/tool/readme.txt uid 1234",
            "set_inode_field upper/opt/tool/readme.txt gid 5678",
            "set_inode_field upper/opt/tool/readme.txt mtime @\(readmeSeconds)",
            "set_inode_field upper/opt/tool/readme.txt mtime_extra \(readmeNanoseconds << 2)",
            "set_inode_field upper/opt mode 041777",
        ]
        let script = staging.appendingPathComponent("cmds").path
        try commands.joined(separator: "\n").write(toFile: script, atomically: true, encoding: .utf8)
        let result = try run(["debugfs", "-w", "-f", script, path])
        guard result.status == 0, !result.stderr.contains("rror") else { throw TestUserError(text: "debugfs failed: \(result)") }
    }
}
