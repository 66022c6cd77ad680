import LinuxSupport

/// Image sizes as users type them: MiB by default (`500`), or with a unit (`500M`, `5G`, `1T`).
/// 1 MiB = 1,048,576 bytes, as Apptainer's `--size`.
public struct ImageSize: Equatable, Sendable, CustomStringConvertible {
    public let bytes: UInt64
    /// The text as the user typed it (for the default file name).
    public let typed: String

    public static let mebibyte: UInt64 = 1 << 20

    public init(bytes: UInt64, typed: String? = nil) {
        self.bytes = bytes
        self.typed = typed ?? "\(bytes / ImageSize.mebibyte)"
    }

    /// Parses `500`, `500M`, `500MiB`, `5G`, `5GiB`, `1T` (case-insensitive). Throws
    /// ``OverlayError/invalidSize(_:)`` for zero, negative, fractional-to-zero or unparsable text.
    public init(parsing text: String) throws {
        let trimmed = text.trimmingWhitespace()
        var digits = Substring(trimmed)
        var unit = ""
        while let last = digits.last, last.isLetter {
            unit = String(last).uppercased() + unit
            digits = digits.dropLast()
        }
        let multiplier: UInt64
        switch unit {
        case "", "M", "MB", "MIB": multiplier = 1 << 20
        case "G", "GB", "GIB": multiplier = 1 << 30
        case "T", "TB", "TIB": multiplier = 1 << 40
        case "K", "KB", "KIB": multiplier = 1 << 10
        default: throw OverlayError.invalidSize(text)
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
              let value = UInt64(digits), value > 0 else {
            throw OverlayError.invalidSize(text)
        }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { throw OverlayError.invalidSize(text) }
        self.bytes = bytes
        self.typed = String(digits) + (unit.isEmpty || unit.hasPrefix("M") ? "" : String(unit.prefix(1)))
    }

    /// `500M`, `5G`: the size in the default file name, as typed.
    public var nameComponent: String {
        typed.last.map { $0.isLetter } == true ? typed : typed + "M"
    }

    public var description: String { ImageSize.human(bytes) }

    /// Bytes in the units people read: `500 MiB`, `5.0 GiB`.
    public static func human(_ bytes: UInt64) -> String {
        Units.humanBytes(bytes)
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}

/// The number of files (inodes) as users type it: thousands (`-n 700` is 700,000).
public struct FileCount: Equatable, Sendable {
    public let thousands: UInt64
    public let typed: String
    public var inodes: UInt64 { thousands * 1000 }

    public init(parsing text: String) throws {
        let trimmed = text.trimmingWhitespace()
        var digits = Substring(trimmed)
        if let last = digits.last, last == "K" || last == "k" { digits = digits.dropLast() }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
              let value = UInt64(digits), value > 0, value <= 4_294_967 else {
            throw OverlayError.invalidFileCount(text)
        }
        self.thousands = value
        self.typed = String(digits)
    }
}

/// The default overlay name: `overlay-<s>M-<n>K.ext3`, sizes as typed.
public enum OverlayName {
    public static func defaultName(size: ImageSize, files: FileCount?) -> String {
        if let files {
            return "overlay-\(size.nameComponent)-\(files.typed)K.ext3"
        }
        return "overlay-\(size.nameComponent).ext3"
    }
}
