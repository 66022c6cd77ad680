import Ext3

/// How `overlay ls` shows, under /upper, what the overlay readers take as deletions and opaque
/// directories (in any of the forms of ``Ext3/Whiteouts``), instead of raw character devices
/// and dot files:
///
///     gone.txt (deleted)                          a whiteout, or a .wh.gone.txt file
///     dir/ (opaque: hides what lies below)        files of lower layers under dir are hidden
///
/// and in the long form a deletion's mode is `w---------` and its size 0 (as BSD ls shows
/// whiteouts). Opaque markers (`.wh..wh..opq`, a whiteout `.wh..opq`) are not listed, nor a
/// `.wh.NAME` file when NAME is there too (NAME wins).
extension ImageBrowser {
    /// One line's entry, the name shown, and what follows it.
    struct Shown {
        var item: Ext3.DirectoryEntry
        var name: String
        var suffix = ""
        var deleted = false
    }

    public static let deletedSuffix = " (deleted)"
    public static let opaqueSuffix = " (opaque: hides what lies below)"

    /// Whether `inside` is /upper or below it (only there do whiteouts mean anything).
    static func isUnderUpper(_ inside: String) -> Bool {
        let path = normalized(inside)
        return path == "/upper" || path.hasPrefix("/upper/")
    }

    func overlayView(_ named: [Ext3.DirectoryEntry]) throws -> [Shown] {
        let present = Set(named.map(\.name))
        var shown: [Shown] = []
        for item in named {
            let entry = item.entry
            let bytes = Array(item.name.utf8)
            switch Ext3.Whiteouts.meaning(of: bytes, kind: entry.kind, whiteout: Ext3.Whiteouts.isWhiteout(entry)) {
            case .opaqueMarker:
                continue
            case let .deletes(target):
                let name = String(decoding: target, as: UTF8.self)
                if target != bytes, present.contains(name) { continue }
                shown.append(Shown(item: item, name: name, suffix: Self.deletedSuffix, deleted: true))
            case .ordinary:
                // A subdirectory whose attributes cannot be read is listed plainly, not refused.
                if entry.kind == .directory, (try? image.isOpaque(entry)) == true {
                    shown.append(Shown(item: item, name: item.name + "/", suffix: Self.opaqueSuffix))
                } else {
                    shown.append(Shown(item: item, name: item.name))
                }
            }
        }
        // Sorted by the name shown, as the rest of the listing.
        return shown.sorted { Array($0.name.utf8).lexicographicallyPrecedes(Array($1.name.utf8)) }
    }
}
