import Foundation

/// Test fixtures made with e2fsprogs (independent of the code under test).
public enum FixtureImage {
    /// An ext3 image made by `mke2fs -t ext3` with `upper/` and `work/` (owner uid:gid) and
    /// optional files under upper/ (`path inside upper` → content). Needs mke2fs and debugfs.
    public static func ext3(at path: String, mebibytes: Int = 64, owner: (UInt32, UInt32) = (0, 0),
                            layout: Bool = true, files: [String: String] = [:]) throws {
        try mkfs(path, mebibytes: mebibytes, type: "ext3")
        guard layout else { return }
        var commands = ["mkdir upper", "mkdir work",
                        "set_inode_field upper uid \(owner.0)", "set_inode_field upper gid \(owner.1)",
                        "set_inode_field work uid \(owner.0)", "set_inode_field work gid \(owner.1)"]
        let staging = FileManager.default.temporaryDirectory.appendingPathComponent("fixture-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: staging, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: staging) }
        for (index, (name, content)) in files.sorted(by: { $0.key < $1.key }).enumerated() {
            let local = staging.appendingPathComponent("f\(index)")
            try content.write(to: local, atomically: true, encoding: .utf8)
            var dir = ""
            for part in name.split(separator: "/").dropLast() {
                dir += "/\(part)"
                commands.append("mkdir upper\(dir)")
            }
            commands.append("write \(local.path) upper/\(name)")
            commands.append("set_inode_field upper/\(name) uid \(owner.0)")
            commands.append("set_inode_field upper/\(name) gid \(owner.1)")
        }
        let script = staging.appendingPathComponent("debugfs.cmds")
        try commands.joined(separator: "\n").write(to: script, atomically: true, encoding: .utf8)
        let result = try run(["debugfs", "-w", "-f", script.path, path])
        guard result.status == 0 else { throw TestUserError(text: "debugfs failed: \(result)") }
    }

    /// A filesystem image of another type (`ext2`, `ext4`) for refusal tests.
    public static func mkfs(_ path: String, mebibytes: Int, type: String) throws {
        let made = try run(["mke2fs", "-q", "-F", "-t", type, "-b", "4096", "-I", "256", "-m", "0", path, "\(mebibytes)M"])
        guard made.status == 0 else { throw TestUserError(text: "mke2fs failed: \(made)") }
    }

    /// e2fsck -fn: true when the image is clean.
    /// e2fsck finds nothing to fix, and the superblock says the image was closed cleanly.
    public static func isClean(_ path: String) throws -> Bool {
        guard try run(["e2fsck", "-fn", path]).status == 0 else { return false }
        return try run(["dumpe2fs", "-h", path]).stdout.split(separator: "\n").contains { line in
            line.hasPrefix("Filesystem state:") && line.split(separator: ":").last?.trimmingCharacters(in: .whitespaces) == "clean"
        }
    }

    /// The content of `inside` in the image, through debugfs (nil when missing).
    public static func cat(_ path: String, _ inside: String) throws -> String? {
        let result = try run(["debugfs", "-R", "cat \"\(inside)\"", path])
        if result.stderr.contains("File not found") { return nil }
        return result.stdout
    }
}
