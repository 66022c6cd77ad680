/// Quoting for POSIX shells, so a printed command line can be pasted back into a shell and run
/// with exactly the same arguments.
public enum ShellQuote {
    /// Characters that never need quoting in sh, bash or zsh.
    private static let safe = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789@%+=:,./_-".unicodeScalars)

    /// `word` as is when it is made only of safe characters, else in single quotes (a single
    /// quote inside becomes `'\''`). The empty word is `''`. A word holding control characters
    /// (a newline, a tab) is written `$'...'` with escapes, which bash, zsh and ksh read, so the
    /// line stays one line.
    public static func quote(_ word: String) -> String {
        // A leading `=` is quoted too: zsh expands `=name` to the path of a command.
        if !word.isEmpty, !word.hasPrefix("="), word.unicodeScalars.allSatisfy({ safe.contains($0) }) { return word }
        if word.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            return "$'" + word.unicodeScalars.map(ansiEscape).joined() + "'"
        }
        return "'" + word.replacingAll("'", with: "'\\''") + "'"
    }

    private static func ansiEscape(_ scalar: Unicode.Scalar) -> String {
        switch scalar {
        case "\n": return "\\n"
        case "\t": return "\\t"
        case "\r": return "\\r"
        case "\\": return "\\\\"
        case "'": return "\\'"
        default:
            if scalar.value < 0x20 || scalar.value == 0x7F {
                let hex = String(scalar.value, radix: 16)
                return "\\x" + (hex.count == 1 ? "0" + hex : hex)
            }
            return String(scalar)
        }
    }

    /// The words quoted and joined with single spaces: one line a shell reads back as `words`.
    public static func line(_ words: [String]) -> String {
        words.map(quote).joined(separator: " ")
    }
}

extension String {
    fileprivate func replacingAll(_ target: Character, with replacement: String) -> String {
        var result = ""
        for character in self {
            if character == target { result += replacement } else { result.append(character) }
        }
        return result
    }
}
