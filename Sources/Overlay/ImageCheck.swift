import Ext3

#if canImport(Glibc)
import Glibc
#endif

/// The checks Apptainer makes before it mounts an overlay, made first so the user gets one
/// clear line instead of a mount failure: the file exists, is ext3 with only the features
/// Apptainer accepts, and (when it will be written) has `upper/` and `work/` directories.
public enum ImageCheck {
    public struct Result: Sendable, Equatable {
        public var superblock: Ext3.Superblock
        /// Owner of the image file on the host.
        public var fileOwner: UInt32
        public var upper: Ext3.Entry?
        public var work: Ext3.Entry?
    }

    /// Why `path` is not there, with a hint when it looks like a mode in capitals (`a.ext3:RO`)
    /// or a comma list (`a.ext3,b.ext3`, which Apptainer splits but one -o does not).
    static func notFound(_ path: String) -> String {
        let start = "overlay '\(path)' not found: "
        if let colon = path.lastIndex(of: ":"), path.index(after: colon) < path.endIndex {
            let mode = path[path.index(after: colon)...]
            if mode.lowercased() == "ro" || mode.lowercased() == "rw" {
                return start + "write the mode in lower case: -o \(path[..<colon]):\(mode.lowercased())"
            }
        }
        if path.contains(",") {
            let parts = path.split(separator: ",").map(String.init)
            let options = parts.enumerated().map { "-o \($0.element)\($0.offset > 0 && !$0.element.hasSuffix(":ro") ? ":ro" : "")" }
            return start + "give each overlay its own -o: \(options.joined(separator: " "))"
        }
        return start + "give an existing image, or make one with create-overlay -s SIZE -n FILES -o \(path)"
    }

    /// Validates `spec`; throws ``OverlayError/message(_:)`` with one actionable line.
    @discardableResult
    public static func validate(_ spec: OverlaySpec) throws -> Result {
        let path = spec.path
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw OverlayError.message(notFound(path))
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw OverlayError.message("overlay '\(path)' is not a file: give an ext3 image file made with create-overlay")
        }
        let superblock: Ext3.Superblock
        do {
            superblock = try Ext3.Superblock(path: path)
        } catch let error as Ext3.Error where error.isTruncated {
            throw error
        } catch {
            throw OverlayError.message("overlay '\(path)' is not an ext3 image: make one with create-overlay")
        }
        if spec.isWritable && info.st_mode & 0o222 == 0 {
            // Root could write it anyway; its owner made it read-only for a reason.
            let mode = String(info.st_mode & 0o7777, radix: 8)
            throw OverlayError.message("overlay '\(path)' is read-only on disk (mode 0\(mode)): use it read-only with '\(path):ro', or make it writable first (chmod u+w \(path))")
        }
        if spec.isWritable && superblock.freeInodeCount == 0 {
            throw OverlayError.message("overlay '\(path)' has no free inodes (all \(superblock.inodeCount) files are used), so it cannot be mounted writable (the overlay needs a few to work): look at it read-only with '\(path):ro', then give it more files with overlay resize \(path) -n THOUSANDS (or grow it with -s SIZE: it keeps its share of inodes)")
        }
        let refusals = superblock.apptainerRefusals
        if !refusals.isEmpty {
            throw OverlayError.message("overlay '\(path)' cannot be used: \(refusals.joined(separator: "; ")); make an ext3 overlay with create-overlay")
        }
        var result = Result(superblock: superblock, fileOwner: info.st_uid, upper: nil, work: nil)
        do {
            let image = try Ext3.Image(path: path)
            defer { try? image.close() }
            result.upper = try image.entry(at: "upper")
            result.work = try image.entry(at: "work")
        } catch let error as Ext3.Error {
            throw OverlayError.message("overlay '\(path)' is damaged: \(error.description); check it with e2fsck -fn \(path)")
        }
        // Apptainer stacks an image's upper/ (read-only or not), never its root: without upper/
        // the image is no overlay in any mode, and :ro is no way out.
        let hasUpper = result.upper?.kind == .directory
        if spec.isWritable {
            let missing = [("upper", result.upper), ("work", result.work)].filter { $0.1?.kind != .directory }.map { $0.0 }
            if !missing.isEmpty {
                let fix = missing.map { "debugfs -w -R 'mkdir \($0)' \(path)" }.joined(separator: "; ")
                let instead = hasUpper ? "use it read-only with '\(path):ro', or add it with: " : "add them with: "
                throw OverlayError.message("overlay '\(path)' has no \(missing.map { $0 + "/" }.joined(separator: " and ")) directory at its root, so it cannot be mounted writable: \(instead)\(fix)")
            }
        } else if !hasUpper {
            throw OverlayError.message("overlay '\(path)' has no upper/ directory at its root, so it is not an overlay (Apptainer stacks upper/ too): add it with: debugfs -w -R 'mkdir upper' \(path), or pack the files with create-overlay --from")
        }
        return result
    }
}
