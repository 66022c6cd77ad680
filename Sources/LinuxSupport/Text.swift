/// Numbers and bytes as people read them.
public enum Units {
    /// 700128 as "700,128".
    public static func grouped(_ value: UInt64) -> String {
        let digits = Array(String(value))
        var out = ""
        for (index, digit) in digits.enumerated() {
            if index > 0 && (digits.count - index) % 3 == 0 { out.append(",") }
            out.append(digit)
        }
        return out
    }

    /// Bytes as people read them: `500 MiB`, `5 GiB`, `170.9 MiB`.
    public static func humanBytes(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(bytes)
        var index = 0
        while value >= 1024, index < units.count - 1 {
            value /= 1024
            index += 1
        }
        if index == 0 { return "\(bytes) B" }
        let tenths = Int((value * 10).rounded())
        if tenths % 10 == 0 { return "\(tenths / 10) \(units[index])" }
        return "\(tenths / 10).\(tenths % 10) \(units[index])"
    }
}

/// Text from images, archives and users made safe for a terminal.
public enum Escaped {
    /// `text` with control characters (C0, DEL, C1) shown as `\e`, `\n`, `\t`, `\xNN` or
    /// `\u{NNNN}` and backslashes doubled, so no byte of it can move the cursor, change the
    /// title or clear the screen.
    public static func terminal(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            switch scalar.value {
            case 0x5C: out += "\\\\"
            case 0x1B: out += "\\e"
            case 0x0A: out += "\\n"
            case 0x09: out += "\\t"
            case 0x0D: out += "\\r"
            case 0..<0x20, 0x7F: out += "\\x" + hex(scalar.value, width: 2)
            case 0x80..<0xA0, 0x2028, 0x2029, 0x202A...0x202E, 0x2066...0x2069:
                out += "\\u{" + hex(scalar.value, width: 4) + "}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// Raw bytes (a name from an image or archive) as terminal-safe text: invalid UTF-8 bytes
    /// shown as `\xNN`.
    public static func terminal(bytes: some Sequence<UInt8>) -> String {
        let array = Array(bytes)
        if let text = String(validating: array, as: UTF8.self) { return terminal(text) }
        var out = ""
        var index = 0
        while index < array.count {
            // One scalar at a time; an invalid byte is shown in hex.
            var decoder = UTF8()
            var iterator = array[index...].makeIterator()
            if case let .scalarValue(scalar) = decoder.decode(&iterator) {
                out += terminal(String(scalar))
                index += String(scalar).utf8.count
            } else {
                out += "\\x" + hex(UInt32(array[index]), width: 2)
                index += 1
            }
        }
        return out
    }

    private static func hex(_ value: UInt32, width: Int) -> String {
        let digits = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}

/// JSON text a command writes for scripts.
public enum JSONText {
    /// A JSON string literal (RFC 8259 escaping; DEL escaped too, so no raw control byte
    /// reaches a terminal).
    public static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
