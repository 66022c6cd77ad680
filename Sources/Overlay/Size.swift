import LinuxSupport

/// Image sizes as users type them: MiB by default (`500`), or with a unit (`500M`, `5G`, `1T`).
/// 1 MiB = 1,048,576 bytes, as Apptainer's `--size`; the units are binary whichever way they are
/// written (`5G`, `5GB` and `5GiB` are all 5 x 1024 MiB). Whole MiB only: `1.5G` is refused with
/// "use 1536M".
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
    /// ``OverlayError/invalidSize(_:)`` for zero or unparsable text, and a message naming the
    /// problem for a negative size and for a fraction (with the whole MiB to give instead).
    public init(parsing text: String) throws {
        let trimmed = text.trimmingWhitespace()
        if trimmed.hasPrefix("-") {
            throw OverlayError.message("-s \(text): a size cannot be negative; give a positive number of MiB such as 500, or with a unit: 500M, 5G")
        }
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
        if let point = digits.firstIndex(where: { $0 == "." || $0 == "," }) {
            throw OverlayError.message(ImageSize.fractionAdvice(text, whole: digits[..<point],
                                                                fraction: digits[digits.index(after: point)...],
                                                                multiplier: multiplier))
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

    /// `-s 1.5G: give whole MiB: use 1536M`; a fraction that is no whole MiB gets the nearest
    /// below and above.
    static func fractionAdvice(_ text: String, whole: Substring, fraction: Substring, multiplier: UInt64) -> String {
        let refusal = "-s \(text): give a whole number of MiB"
        guard !fraction.isEmpty, (whole + fraction).allSatisfy({ $0.isASCII && $0.isNumber }),
              whole.count + fraction.count <= 15,
              let wholeValue = UInt64(whole.isEmpty ? "0" : whole), let fractionValue = UInt64(fraction) else {
            return refusal + ", e.g. 500, or with a unit: 500M, 5G"
        }
        var scale: UInt64 = 1
        for _ in fraction { scale *= 10 }
        // bytes = (whole + fraction / scale) * multiplier, in MiB: exact when it divides.
        let numerator = (wholeValue * scale + fractionValue).multipliedReportingOverflow(by: multiplier / min(multiplier, mebibyte))
        guard !numerator.overflow, multiplier >= mebibyte else {
            return refusal + " (at least 1M), e.g. 500, or with a unit: 500M, 5G"
        }
        let mebibytes = numerator.partialValue / scale
        if numerator.partialValue % scale == 0 {
            return refusal + ": use \(mebibytes)M"
        }
        return refusal + ": use \(mebibytes)M or \(mebibytes + 1)M"
    }

    /// `500M`, `5120M`: the size in the default file name, always in MiB (`-s 5G` gives
    /// `overlay-5120M-...`), as `-s` counts.
    public var nameComponent: String {
        "\(bytes / ImageSize.mebibyte)M"
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
        if trimmed.hasPrefix("-") {
            throw OverlayError.message("-n \(text): a file count cannot be negative; give a positive number of thousands of files, e.g. -n 700 for 700,000")
        }
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

/// The default overlay name: `overlay-<s>M-<n>K.ext3`: the size in MiB, and the thousands of
/// files as given with `-n`, else the thousands the image got (`-s 500` alone: 32K).
public enum OverlayName {
    public static func defaultName(size: ImageSize, files: FileCount?, inodes: UInt64) -> String {
        let thousands = files?.typed ?? "\(max(1, inodes / 1000))"
        return "overlay-\(size.nameComponent)-\(thousands)K.ext3"
    }
}
