import Testing
@testable import Overlay

@Suite struct StackTests {
    @Test func firstWritableRestReadOnly() throws {
        let stack = try OverlayStack(arguments: ["a.ext3", "b.ext3", "c.ext3:ro"])
        #expect(stack.writable?.path == "a.ext3")
        #expect(stack.readOnlyTopmostFirst.map(\.path) == ["c.ext3", "b.ext3"])
    }

    @Test func firstReadOnlyWhenAsked() throws {
        let stack = try OverlayStack(arguments: ["a.ext3:ro", "b.ext3"])
        #expect(stack.writable == nil)
        #expect(stack.readOnlyTopmostFirst.map(\.path) == ["b.ext3", "a.ext3"])
    }

    @Test func laterWritableIsRefusedWithTheRule() throws {
        #expect(throws: OverlayError.secondWritable("b.ext3")) {
            try OverlayStack(arguments: ["a.ext3", "b.ext3:rw"])
        }
        #expect(OverlayError.secondWritable("b.ext3").description.contains("add ':ro'"))
    }

    @Test func sizesAsTyped() throws {
        #expect(try ImageSize(parsing: "500").bytes == 500 << 20)
        #expect(try ImageSize(parsing: "500M").bytes == 500 << 20)
        #expect(try ImageSize(parsing: "5G").bytes == 5 << 30)
        #expect(OverlayName.defaultName(size: try ImageSize(parsing: "500"), files: try FileCount(parsing: "700")) == "overlay-500M-700K.ext3")
        #expect(OverlayName.defaultName(size: try ImageSize(parsing: "5G"), files: try FileCount(parsing: "3200")) == "overlay-5G-3200K.ext3")
        for bad in ["0", "-5", "abc", "", "5X", "0G", "1.5"] {
            #expect(throws: OverlayError.invalidSize(bad)) { try ImageSize(parsing: bad) }
        }
        #expect(throws: OverlayError.invalidFileCount("0")) { try FileCount(parsing: "0") }
    }

    @Test func binds() throws {
        #expect(try Bind(parsing: "/data") == Bind(source: "/data", destination: "/data"))
        #expect(try Bind(parsing: "/data:/mnt:ro") == Bind(source: "/data", destination: "/mnt", readOnly: true))
        #expect(throws: OverlayError.invalidBind("/a:/b:xx")) { try Bind(parsing: "/a:/b:xx") }
    }
}
