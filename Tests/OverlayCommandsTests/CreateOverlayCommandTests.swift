import ArgumentParser
import Foundation
import Testing
import TestSupport
import Ext3
@testable import OverlayCommands

@Suite struct CreateOverlayCommandTests {
    @Test func parsesTheSeedInterface() throws {
        let command = try CreateOverlay.parse(["-s", "500", "-n", "700", "-o", "env.ext3", "--create-dir", "opt/conda",
                                               "--create-dir", "data", "--fakeroot", "--json"])
        #expect(command.size?.bytes == 500 << 20)
        #expect(command.files?.inodes == 700_000)
        #expect(command.output == "env.ext3")
        #expect(command.createDirectories == ["opt/conda", "data"])
        #expect(command.fakeroot && command.json)
        let formatter = try command.formatter()
        #expect(formatter.configuration.sizeBytes == 500 << 20)
        #expect(formatter.configuration.minimumInodes == 700_000)
        #expect(formatter.configuration.owner == .root)
    }

    @Test func sizeIsRequiredAndFilesAreOptional() throws {
        // Refused when run (after the command line parsed, so a mistyped option is named first).
        #expect(throws: UsageError.self) { _ = try CreateOverlay.parse(["-n", "5"]).formatter() }
        let command = try CreateOverlay.parse(["-s", "64"])
        #expect(command.files == nil)
        #expect(try command.formatter().configuration.minimumInodes == nil)
    }

    @Test func tooManyFilesSaysTheMostInThousands() throws {
        do {
            _ = try CreateOverlay.parse(["-s", "64", "-n", "700"]).formatter()
            Issue.record("700K files in 64 MiB were accepted")
        } catch {
            let text = CreateOverlay.message(for: error)
            #expect(text.contains("-n 700: 700,000 files do not fit in 64 MiB"), "\(text)")
            #expect(text.contains("at most 240,128 (-n 240)"), "\(text)")
            #expect(text.contains("-s") && !text.contains("\n"))
        }
    }

    @Test func invalidValuesAreValidationErrors() throws {
        for arguments in [["-s", "0"], ["-s", "abc"], ["-s", "64", "-n", "0"], ["-s", "64", "--create-dir", ".."], ["-s", "2"]] {
            #expect(throws: (any Error).self, "\(arguments)") { _ = try CreateOverlay.parse(arguments).formatter() }
        }
    }

    @Test func ownerFollowsFakerootThenSudoThenCaller() {
        #expect(CreateOverlay.owner(fakeroot: true, environment: [:]).layout == .root)
        let plain = CreateOverlay.owner(fakeroot: false, environment: [:])
        #expect(plain.layout == Ext3.Owner(uid: getuid(), gid: getgid()))
        #expect(plain.image == nil)
        let sudo = CreateOverlay.owner(fakeroot: false, environment: ["SUDO_UID": "1234", "SUDO_GID": "5678"])
        if geteuid() == 0 {
            #expect(sudo.layout == Ext3.Owner(uid: 1234, gid: 5678))
            #expect(sudo.image == Ext3.Owner(uid: 1234, gid: 5678))
            let both = CreateOverlay.owner(fakeroot: true, environment: ["SUDO_UID": "1234", "SUDO_GID": "5678"])
            #expect(both.layout == .root && both.image == Ext3.Owner(uid: 1234, gid: 5678))
        } else {
            #expect(sudo.layout == plain.layout)  // SUDO_* only counts when running as root
        }
    }

    @Test func theLineSaysNameSizeFilesTablesJournalAndWhatIsLeft() {
        let summary = Ext3.Summary(path: "overlay-500M-700K.ext3", sizeBytes: 500 << 20, blockSize: 4096, inodeCount: 700_128,
                                   inodeTableBytes: 179_232_768, journalBytes: 16 << 20, dataBytes: 323_817_472,
                                   allocatedBytes: 991_232)
        #expect(CreateOverlay.line(for: summary)
                == "overlay-500M-700K.ext3: 500 MiB, 700,128 files; inode tables take 170.9 MiB and the journal 16 MiB, "
                + "308.8 MiB left for data (968 KiB on disk now)")
    }

    @Test func failuresToCreateNameTheDirectory() {
        let denied = CreateOverlay.explain(.cannotCreate(path: "/x/.a.tmp", errno: EACCES),
                                           target: "/x/a.ext3")
        #expect(denied == "cannot create /x/a.ext3: directory /x is not writable (Permission denied); choose another place with -o")
        let missing = CreateOverlay.explain(.cannotCreate(path: ".a.tmp", errno: ENOENT),
                                            target: "a.ext3")
        #expect(missing.contains("directory . does not exist"))
        #expect(CreateOverlay.explain(.exists(path: "a.ext3"), target: "a.ext3").contains("already exists"))
        let full = CreateOverlay.explain(.library(operation: "close filesystem", path: ".a.ext3.tmp-1", code: Int64(ENOSPC),
                                                  message: "No space left on device"), target: "a.ext3")
        #expect(full == "cannot create a.ext3: No space left on device; free some space or create it elsewhere with -o")
        let other = CreateOverlay.explain(.library(operation: "create the journal", path: ".a.ext3.tmp-1", code: 1,
                                                   message: "Operation not permitted"), target: "a.ext3")
        #expect(other == "cannot create a.ext3: create the journal: Operation not permitted")
    }

    @Test func runsInProcess() throws {
        let directory = try TempDirectory("create-command")
        var command = try CreateOverlay.parseAsRoot(["-s", "16", "-o", directory.file("x.ext3")]) as! CreateOverlay
        try command.run()
        #expect(try directory.listing() == ["x.ext3"])
        // A second run refuses to touch it.
        command = try CreateOverlay.parseAsRoot(["-s", "16", "-o", directory.file("x.ext3")]) as! CreateOverlay
        #expect(throws: CommandFailure.self) { try command.run() }
    }
}
