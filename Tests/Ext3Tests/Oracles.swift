import Foundation
import TestSupport

/// e2fsprogs as the judge of what we build.
enum Oracle {
    /// `dumpe2fs -h` as "Field name" -> "value".
    static func superblock(_ image: String) throws -> [String: String] {
        let result = try run(["dumpe2fs", "-h", image])
        guard result.status == 0 else { throw OracleError(text: "dumpe2fs -h \(image): \(result)") }
        var fields: [String: String] = [:]
        for line in result.stdout.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            if fields[key] == nil { fields[key] = value }
        }
        return fields
    }

    /// `e2fsck -fn`: exit status and output.
    static func fsck(_ image: String) throws -> ProcessResult {
        try run(["e2fsck", "-fn", image])
    }

    /// What `debugfs -R "stat PATH"` says about an inode.
    struct Inode {
        var type: String
        var mode: UInt32
        var uid: UInt32
        var gid: UInt32
        var size: UInt64
        var links: Int
    }

    static func stat(_ image: String, _ path: String) throws -> Inode? {
        let result = try run(["debugfs", "-R", "stat \"\(path)\"", image])
        let text = result.stdout
        guard result.status == 0, text.contains("Inode:") else { return nil }
        func value(after label: String) -> String? {
            guard let range = text.range(of: label) else { return nil }
            return text[range.upperBound...].split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).first.map(String.init)
        }
        guard let type = value(after: "Type:"), let mode = value(after: "Mode:").flatMap({ UInt32($0, radix: 8) }),
              let uid = value(after: "User:").flatMap({ UInt32($0) }), let gid = value(after: "Group:").flatMap({ UInt32($0) }),
              let size = value(after: "Size:").flatMap({ UInt64($0) }), let links = value(after: "Links:").flatMap({ Int($0) })
        else { throw OracleError(text: "cannot read debugfs stat output for \(path): \(text)") }
        return Inode(type: type, mode: mode, uid: uid, gid: gid, size: size, links: links)
    }

    /// The names in a directory of the image (`debugfs -R "ls -l"` would need parsing widths).
    static func list(_ image: String, _ path: String) throws -> [String] {
        let result = try run(["debugfs", "-R", "ls \"\(path)\"", image])
        guard result.status == 0 else { throw OracleError(text: "debugfs ls \(path): \(result)") }
        // Entries look like "  12  (12) upper   13  (20) work"; names follow the "(rec_len)".
        var names: [String] = []
        let tokens = result.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" })
        var index = 0
        while index < tokens.count {
            if tokens[index].hasPrefix("("), tokens[index].hasSuffix(")"), index + 1 < tokens.count {
                names.append(String(tokens[index + 1]))
                index += 2
            } else {
                index += 1
            }
        }
        return names.sorted()
    }

    /// Apptainer's rule on the superblock (its pkg/image/ext3.go), read from the raw bytes.
    static func apptainerAccepts(_ image: String) throws -> (ok: Bool, why: String) {
        guard let handle = FileHandle(forReadingAtPath: image) else { return (false, "cannot open \(image)") }
        defer { try? handle.close() }
        try handle.seek(toOffset: 1024)
        let bytes = [UInt8](handle.readData(ofLength: 1024))
        guard bytes.count == 1024 else { return (false, "short read") }
        func u16(_ at: Int) -> UInt32 { UInt32(bytes[at - 1024]) | UInt32(bytes[at - 1023]) << 8 }
        func u32(_ at: Int) -> UInt32 { u16(at) | u16(at + 2) << 16 }
        let magic = u16(1080), compat = u32(1116), incompat = u32(1120), roCompat = u32(1124)
        let hasJournal: UInt32 = 0x4
        let incompatAllowed: UInt32 = 0x2 | 0x4 | 0x10     // filetype, recover, meta_bg
        let roCompatAllowed: UInt32 = 0x1 | 0x2 | 0x4      // sparse_super, large_file, btree_dir
        if magic != 0xEF53 { return (false, "magic \(String(magic, radix: 16))") }
        if compat & hasJournal == 0 { return (false, "no has_journal in compat \(String(compat, radix: 16))") }
        if incompat & ~incompatAllowed != 0 { return (false, "incompat \(String(incompat, radix: 16))") }
        if roCompat & ~roCompatAllowed != 0 { return (false, "ro_compat \(String(roCompat, radix: 16))") }
        return (true, "compat \(String(compat, radix: 16)) incompat \(String(incompat, radix: 16)) ro_compat \(String(roCompat, radix: 16))")
    }

    /// Bytes the file occupies on disk (st_blocks x 512).
    static func allocatedBytes(_ path: String) -> UInt64 {
        var info = Glibc.stat()
        guard lstat(path, &info) == 0 else { return 0 }
        return UInt64(info.st_blocks) * 512
    }

    static func fileSize(_ path: String) -> UInt64? {
        var info = Glibc.stat()
        guard lstat(path, &info) == 0 else { return nil }
        return UInt64(info.st_size)
    }
}

struct OracleError: Error, CustomStringConvertible {
    let text: String
    var description: String { text }
}
