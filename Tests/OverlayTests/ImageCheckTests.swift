import Testing
import Foundation
import TestSupport
@testable import Overlay

@Suite(.requires(executable: "mke2fs"), .requires(executable: "debugfs"))
struct ImageCheckTests {
    @Test func acceptsAnExt3OverlayAndSeesItsLayout() throws {
        let dir = try TempDirectory()
        try FixtureImage.ext3(at: dir.file("a.ext3"), owner: (1234, 5678))
        let result = try ImageCheck.validate(OverlaySpec(path: dir.file("a.ext3"), mode: .writable))
        #expect(result.upper?.kind == .directory)
        #expect(result.upper?.uid == 1234)
        #expect(result.work?.gid == 5678)
    }

    @Test func refusesExt4NamingTheFeatures() throws {
        let dir = try TempDirectory()
        try FixtureImage.mkfs(dir.file("b.ext4"), mebibytes: 64, type: "ext4")
        let error = #expect(throws: OverlayError.self) {
            try ImageCheck.validate(OverlaySpec(path: dir.file("b.ext4"), mode: .readOnly))
        }
        #expect(error?.description.contains("extent") == true)
        #expect(error?.description.contains("create-overlay") == true)
    }

    @Test func writableNeedsUpperAndWork() throws {
        let dir = try TempDirectory()
        try FixtureImage.ext3(at: dir.file("c.ext3"), layout: false)
        let error = #expect(throws: OverlayError.self) {
            try ImageCheck.validate(OverlaySpec(path: dir.file("c.ext3"), mode: .writable))
        }
        #expect(error?.description.contains("no upper/ and work/") == true)
        // Read-only it is no overlay either (there is no upper/ to stack): refused the same way,
        // not left to fail at the mount.
        let readOnly = #expect(throws: OverlayError.self) {
            try ImageCheck.validate(OverlaySpec(path: dir.file("c.ext3"), mode: .readOnly))
        }
        #expect(readOnly?.description.contains("has no upper/ directory at its root, so it is not an overlay") == true)
    }

    @Test func missingAndNonExtFiles() throws {
        let dir = try TempDirectory()
        #expect(throws: OverlayError.self) { try ImageCheck.validate(OverlaySpec(path: dir.file("none.ext3"), mode: .readOnly)) }
        try "hello".write(toFile: dir.file("text.ext3"), atomically: true, encoding: .utf8)
        let error = #expect(throws: OverlayError.self) { try ImageCheck.validate(OverlaySpec(path: dir.file("text.ext3"), mode: .readOnly)) }
        #expect(error?.description.contains("is not an ext3 image") == true)
    }
}

@Suite struct LockTests {
    @Test func writeLockExcludesOthersReadLocksShare() throws {
        let dir = try TempDirectory()
        let path = dir.file("img")
        try "x".write(toFile: path, atomically: true, encoding: .utf8)
        let reader1 = try ImageLock.acquire(path, .read)
        let reader2 = try ImageLock.acquire(path, .read)
        #expect(throws: OverlayError.imageInUse(path: path, heldForWriting: false, wantWrite: true)) {
            try ImageLock.acquire(path, .write)
        }
        #expect(try ImageLock.state(of: path) == .readLocked)
        reader1.release(); reader2.release()
        let writer = try ImageLock.acquire(path, .write)
        #expect(throws: OverlayError.imageInUse(path: path, heldForWriting: true, wantWrite: false)) {
            try ImageLock.acquire(path, .read)
        }
        #expect(try ImageLock.state(of: path) == .writeLocked)
        writer.release()
        #expect(try ImageLock.state(of: path) == .unlocked)
    }
}
