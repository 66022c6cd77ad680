import Foundation
import TestSupport

/// e2fsprogs and stat(2) as judges of what create-overlay made.
enum CreateOracle {
    static func fsckClean(_ image: String) throws -> Bool {
        let result = try run(["e2fsck", "-fn", image])
        return result.status == 0
    }

    static func superblock(_ image: String) throws -> [String: String] {
        let result = try run(["dumpe2fs", "-h", image])
        var fields: [String: String] = [:]
        for line in result.stdout.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].trimmingCharacters(in: .whitespaces)
            if fields[key] == nil {
                fields[key] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return fields
    }

    /// Owner and mode of a path inside the image, from `debugfs -R stat`.
    static func owner(_ image: String, _ path: String) throws -> (uid: UInt32, gid: UInt32, mode: UInt32)? {
        let text = try run(["debugfs", "-R", "stat \"\(path)\"", image]).stdout
        func value(after label: String) -> String? {
            guard let range = text.range(of: label) else { return nil }
            return text[range.upperBound...].split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).first.map(String.init)
        }
        guard let uid = value(after: "User:").flatMap({ UInt32($0) }), let gid = value(after: "Group:").flatMap({ UInt32($0) }),
              let mode = value(after: "Mode:").flatMap({ UInt32($0, radix: 8) }) else { return nil }
        return (uid, gid, mode)
    }

    static func fileStat(_ path: String) -> Glibc.stat? {
        var info = Glibc.stat()
        return lstat(path, &info) == 0 ? info : nil
    }

    /// Names in a directory, hidden ones included, sorted.
    static func listing(_ directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
    }
}
