import Testing
@testable import OverlayCommands

@Suite struct ParsingTests {
    @Test func secondWritableOverlayIsRejectedAtParse() throws {
        #expect(throws: (any Error).self) {
            _ = try RunOverlay.parseAsRoot(["-o", "a.ext3", "-o", "b.ext3:rw", "--", "/bin/true"])
        }
    }
}
