import LinuxSupport
import Testing

struct SystemErrorTests {
    @Test func describesItselfInOneLine() {
        let error = SystemError("open", path: "/no/such/file", errno: .noSuchFileOrDirectory)
        #expect(error.description == "/no/such/file: open: No such file or directory")
        #expect(!error.description.contains("\n"))
    }

    @Test func withoutAPathNamesTheOperation() {
        #expect(SystemError("pipe", errno: .tooManyOpenFiles).description == "pipe: Too many open files")
    }

    @Test func takesErrnoFromTheFailedCall() {
        #expect(throws: SystemError("read", errno: .badFileDescriptor)) {
            var byte: UInt8 = 0
            _ = try IO.read(-1, into: &byte, count: 1)
        }
    }
}

struct UnitsTests {
    @Test func groupsThousands() {
        #expect(Units.grouped(0) == "0")
        #expect(Units.grouped(999) == "999")
        #expect(Units.grouped(1_000) == "1,000")
        #expect(Units.grouped(700_128) == "700,128")
        #expect(Units.grouped(3_200_288) == "3,200,288")
    }

    @Test func bytesAsPeopleReadThem() {
        #expect(Units.humanBytes(0) == "0 B")
        #expect(Units.humanBytes(1_023) == "1023 B")
        #expect(Units.humanBytes(1_536) == "1.5 KiB")
        #expect(Units.humanBytes(500 << 20) == "500 MiB")
        #expect(Units.humanBytes(5 << 30) == "5 GiB")
        #expect(Units.humanBytes(179_201_229) == "170.9 MiB")
    }
}

struct EscapedTests {
    /// No C0 control character or DEL is left raw (C1 ones are escaped too).
    func isSafe(_ text: String) -> Bool {
        !text.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F || (0x80..<0xA0).contains($0.value) }
    }

    @Test func escapesEscapeBellAndCSI() {
        let text = "a\u{1B}[2Jb\u{07}c\u{9B}31md\u{7F}e\\f\n\t\r"
        let escaped = Escaped.terminal(text)
        #expect(escaped == "a\\e[2Jb\\x07c\\u{009B}31md\\x7Fe\\\\f\\n\\t\\r")
        #expect(isSafe(escaped))
    }

    @Test func escapesEveryControlCharacter() {
        let all = String(String.UnicodeScalarView((0..<0xA0).compactMap(Unicode.Scalar.init)))
        #expect(isSafe(Escaped.terminal(all)))
    }

    @Test func showsInvalidUTF8BytesInHex() {
        let bytes: [UInt8] = [0x66, 0xFF, 0x1B, 0x5B, 0xC3, 0xA9, 0xC3, 0x07, 0x80]
        let escaped = Escaped.terminal(bytes: bytes)
        #expect(escaped == "f\\xFF\\e[é\\xC3\\x07\\x80")
        #expect(isSafe(escaped))
    }

    @Test func leavesPlainTextAlone() {
        #expect(Escaped.terminal("naïve file.txt") == "naïve file.txt")
        #expect(Escaped.terminal(bytes: Array("naïve".utf8)) == "naïve")
    }
}
