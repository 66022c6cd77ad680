import LinuxSupport
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

private func isOpen(_ fd: Int32) -> Bool { fcntl(fd, F_GETFD) >= 0 }

@Suite(.serialized)
struct FileLockTests {
    @Test func twoOpenFileDescriptionsOfOneFile() throws {
        let dir = try TempDirectory()
        let path = dir.file("image")
        let first = try OwnedDescriptor(opening: path, O_RDWR | O_CREAT)
        let second = try OwnedDescriptor(opening: path, O_RDWR)
        // Readers share.
        #expect(try FileLock.tryLock(first.rawValue, .read, path: path))
        #expect(try FileLock.tryLock(second.rawValue, .read, path: path))
        #expect(try FileLock.holder(first.rawValue, path: path) == .readers)
        second.close()
        // A writer is refused while a reader holds it, and sees a reader.
        let third = try OwnedDescriptor(opening: path, O_RDWR)
        #expect(try !FileLock.tryLock(third.rawValue, .write, path: path))
        #expect(try FileLock.holder(third.rawValue, path: path) == .readers)
        // Closing the reader's description releases its lock.
        first.close()
        #expect(try FileLock.holder(third.rawValue, path: path) == .none)
        #expect(try FileLock.tryLock(third.rawValue, .write, path: path))
        let fourth = try OwnedDescriptor(opening: path, O_RDONLY)
        #expect(try FileLock.holder(fourth.rawValue, path: path) == .writer)
        #expect(try !FileLock.tryLock(fourth.rawValue, .read, path: path))
    }

    @Test func aLockOnABadDescriptorIsAnError() {
        #expect(throws: SystemError("lock", path: "x", errno: .badFileDescriptor)) {
            try FileLock.tryLock(-1, .read, path: "x")
        }
    }
}

@Suite(.serialized)
struct OwnedDescriptorTests {
    @Test func closesWhenItsOwnerGoesAway() throws {
        var number: Int32 = -1
        do {
            let descriptor = try OwnedDescriptor(opening: "/dev/null", O_RDONLY)
            number = descriptor.rawValue
            #expect(isOpen(number))
        }
        #expect(number >= 0)
        #expect(!isOpen(number))
    }

    @Test func closesExactlyOnce() throws {
        let keeper = try OwnedDescriptor(opening: "/dev/null", O_RDONLY)
        var reused: Int32 = -1
        do {
            let descriptor = try OwnedDescriptor(opening: "/dev/null", O_RDONLY)
            let number = descriptor.rawValue
            descriptor.close()
            #expect(!isOpen(number))
            // The number now names another open file description, which the closed owner
            // must leave alone when it goes away.
            reused = dup2(keeper.rawValue, number)
            #expect(reused == number)
        }
        #expect(isOpen(reused))
        close(reused)
    }

    @Test func takeHandsOwnershipOn() throws {
        let number = try OwnedDescriptor(opening: "/dev/null", O_RDONLY).take()
        #expect(isOpen(number))
        close(number)
    }

    @Test func opensCloseOnExec() throws {
        let descriptor = try OwnedDescriptor(opening: "/dev/null", O_RDONLY)
        #expect(fcntl(descriptor.rawValue, F_GETFD) & FD_CLOEXEC != 0)
        let pipe = try Pipe()
        #expect(fcntl(pipe.readEnd.rawValue, F_GETFD) & FD_CLOEXEC != 0)
        #expect(fcntl(pipe.writeEnd.rawValue, F_GETFD) & FD_CLOEXEC != 0)
    }

    @Test func aMissingFileIsASystemError() {
        #expect(throws: SystemError("open", path: "/no/such/file", errno: .noSuchFileOrDirectory)) {
            _ = try OwnedDescriptor(opening: "/no/such/file", O_RDONLY)
        }
    }

    @Test func aPipeCarriesWhatIsWritten() throws {
        let pipe = try Pipe()
        let readEnd = pipe.readEnd
        let writeEnd = pipe.writeEnd
        try IO.writeAll(writeEnd.rawValue, Array("hello\n".utf8))
        IO.writeLine("world", to: writeEnd.rawValue)
        writeEnd.close()
        #expect(try IO.readAll(readEnd.rawValue) == Array("hello\nworld\n".utf8))
    }
}
