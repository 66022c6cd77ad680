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
        #expect(OverlayName.defaultName(size: try ImageSize(parsing: "500"), files: try FileCount(parsing: "700"), inodes: 700_128) == "overlay-500M-700K.ext3")
        #expect(OverlayName.defaultName(size: try ImageSize(parsing: "5G"), files: try FileCount(parsing: "3200"), inodes: 3_200_288) == "overlay-5120M-3200K.ext3")
        for bad in ["0", "abc", "", "5X", "0G"] {
            #expect(throws: OverlayError.invalidSize(bad)) { try ImageSize(parsing: bad) }
        }
        // 5G, 5GB and 5GiB are the same: the units are binary, as -s counts MiB.
        #expect(try ImageSize(parsing: "5GB").bytes == 5 << 30)
        #expect(try ImageSize(parsing: "5GiB").bytes == 5 << 30)
        // What cannot be a size is called what it is, with what to give instead.
        let refusals = [
            ("-5", "-s -5: a size cannot be negative; give a positive number of MiB such as 500, or with a unit: 500M, 5G"),
            ("1.5G", "-s 1.5G: give a whole number of MiB: use 1536M"),
            ("0.5T", "-s 0.5T: give a whole number of MiB: use 524288M"),
            ("1.5", "-s 1.5: give a whole number of MiB: use 1M or 2M"),
            ("2.7G", "-s 2.7G: give a whole number of MiB: use 2764M or 2765M"),
        ]
        for (text, message) in refusals {
            #expect(throws: OverlayError.message(message)) { try ImageSize(parsing: text) }
        }
        #expect(throws: OverlayError.message("-n -5: a file count cannot be negative; give a positive number of thousands of files, e.g. -n 700 for 700,000")) {
            try FileCount(parsing: "-5")
        }
        #expect(throws: OverlayError.invalidFileCount("0")) { try FileCount(parsing: "0") }
    }

    @Test func binds() throws {
        #expect(try Bind(parsing: "/data") == Bind(source: "/data", destination: "/data"))
        #expect(try Bind(parsing: "/data:/mnt:ro") == Bind(source: "/data", destination: "/mnt", readOnly: true))
        #expect(throws: OverlayError.invalidBind("/a:/b:xx")) { try Bind(parsing: "/a:/b:xx") }
    }
}
