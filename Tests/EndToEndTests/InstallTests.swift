import Foundation
import Testing
import TestSupport

/// The checkout this test bundle was built from (where Scripts/install lives).
private let repositoryRoot: String? = {
    var directory = productsDirectory
    while directory.path != "/" {
        if FileManager.default.fileExists(atPath: directory.appendingPathComponent("Scripts/install").path) { return directory.path }
        directory = directory.deletingLastPathComponent()
    }
    return nil
}()

/// Where ArgumentParser's generate-manual plugin leaves the pages (Scripts/test runs it).
private var manPageDirectory: String? {
    repositoryRoot.map { $0 + "/.build/plugins/GenerateManual/outputs" }
}

private var manPagesGenerated: Bool {
    manPageDirectory.map { FileManager.default.fileExists(atPath: $0 + "/overlay/overlay.1") } ?? false
}

/// Scripts/install into a temporary prefix, and each command run from there as a user would:
/// --version, every man page through man, bash completion, then --uninstall.
@Suite(.serialized,
       .enabled(if: underCI || manPagesGenerated,
                "needs the man pages: swift package plugin generate-manual --multi-page --configuration debug (Scripts/test runs it)"),
       .requires(executable: "man", "renders the installed pages"),
       .requires(executable: "bash", "sources the completion scripts"))
struct InstallTests {
    /// Installs the built binaries and the generated pages under `prefix`.
    func install(_ prefix: String) throws -> ProcessResult {
        let root = try #require(repositoryRoot)
        let pages = try #require(manPageDirectory)
        return try run([root + "/Scripts/install", "--prefix", prefix, "--bin-dir", productsDirectory.path, "--man-dir", pages],
                       environment: ["PATH": "/usr/bin:/bin", "HOME": prefix], timeout: 60)
    }

    @Test func installsRunsAndUninstallsExactlyWhatItPut() throws {
        let directory = try TempDirectory("install")
        let prefix = directory.file("prefix")
        // Something of someone else's in the prefix: --uninstall leaves it.
        try FileManager.default.createDirectory(atPath: prefix + "/bin", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: prefix + "/bin/theirs", contents: Data("#!/bin/sh\n".utf8))

        let installed = try install(prefix)
        #expect(installed.status == 0, "\(installed)")
        #expect(installed.stderr.isEmpty, "\(installed)")

        // --version from the installed commands: the version and, from a checkout, the commit.
        let fromCheckout = FileManager.default.fileExists(atPath: (repositoryRoot ?? "") + "/.git")
        let pattern = fromCheckout ? #"^[0-9]+\.[0-9]+\.[0-9]+ \(commit [0-9a-f]{12}(, modified)?\)$"# : #"^[0-9]+\.[0-9]+\.[0-9]+"#
        for command in ["create-overlay", "mount-overlay", "run-overlay", "overlay"] {
            let result = try run([prefix + "/bin/" + command, "--version"])
            #expect(result.status == 0, "\(result)")
            let line = result.stdout.trimmingCharacters(in: .newlines)
            #expect(line.hasPrefix(command + " "), "\(result)")
            #expect(String(line.dropFirst(command.count + 1)).range(of: pattern, options: .regularExpression) != nil, "\(result)")
        }
        let json = try run([prefix + "/bin/overlay", "version", "--json"])
        #expect(json.status == 0, "\(json)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        #expect((object["version"] as? String)?.isEmpty == false, "\(json)")
        if fromCheckout { #expect((object["commit"] as? String)?.count == 12, "\(json)") }
        #expect(object["modified"] is Bool, "\(json)")

        // A page for each command and each overlay subcommand, each rendered by man without a warning.
        let pages = try FileManager.default.contentsOfDirectory(atPath: prefix + "/share/man/man1").sorted()
        // The subcommands as --help lists them, and theirs in turn (overlay snapshot create...).
        func subcommands(_ path: [String]) throws -> [[String]] {
            let help = try run([prefix + "/bin/overlay"] + path + ["--help"]).stdout
            guard help.contains("SUBCOMMANDS:") else { return [] }
            let names = help.components(separatedBy: "SUBCOMMANDS:").last?.split(separator: "\n")
                // "  info   Show ...": two spaces, then the name (wrapped lines are indented further).
                .compactMap { $0.hasPrefix("  ") && $0.dropFirst(2).first?.isLowercase == true ? $0.split(separator: " ").first.map(String.init) : nil }
                .filter { $0 != "help" } ?? []
            return try names.flatMap { [path + [$0]] + (try subcommands(path + [$0])) }
        }
        let all = try subcommands([])
        #expect(all.contains(["info"]) && all.contains(["version"]) && all.contains(["snapshot", "create"]), "\(all)")
        let expected = ["create-overlay.1", "mount-overlay.1", "run-overlay.1", "overlay.1"]
            + all.map { "overlay." + $0.joined(separator: ".") + ".1" }
        #expect(pages == expected.sorted(), "\(pages)")
        for page in pages {
            let shown = try run(["man", "--warnings", "-l", prefix + "/share/man/man1/" + page],
                                environment: ["PATH": "/usr/bin:/bin", "MANWIDTH": "80", "MAN_DISABLE_SECCOMP": "1", "LANG": "C.UTF-8"])
            #expect(shown.status == 0, "\(page): \(shown)")
            #expect(shown.stderr.isEmpty, "\(page): \(shown.stderr)")
            #expect(shown.stdout.contains("NAME") && shown.stdout.contains("SYNOPSIS"), "\(page): \(shown.stdout)")
        }

        // bash completes image names for -o and for overlay info, and the runtimes for --runtime.
        let work = directory.file("work")
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: false)
        for name in ["env.ext3", "data.img", "notes.txt"] { FileManager.default.createFile(atPath: work + "/" + name, contents: nil) }
        func complete(_ command: String, _ line: String) throws -> [String] {
            let script = """
                source "$COMPLETIONS/$0"
                read -ra COMP_WORDS <<< "$1"; [[ "$1" == *" " ]] && COMP_WORDS+=("")
                COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}
                "_$0" "$0" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
                printf '%s\\n' "${COMPREPLY[@]}"
                """
            let result = try run(["bash", "--norc", "-c", script, command, line],
                                 environment: ["PATH": "/usr/bin:/bin", "COMPLETIONS": prefix + "/share/bash-completion/completions"],
                                 currentDirectory: work)
            #expect(result.status == 0, "\(result)")
            return result.stdout.split(separator: "\n").map(String.init).sorted()
        }
        #expect(try complete("run-overlay", "run-overlay -o e") == ["env.ext3"])
        #expect(try complete("overlay", "overlay info ") == ["data.img", "env.ext3"])
        #expect(try complete("create-overlay", "create-overlay -s 64 -o ") == ["data.img", "env.ext3"])
        #expect(try complete("mount-overlay", "mount-overlay --runtime ") == ["apptainer", "auto", "native", "singularity"])
        #expect(try complete("run-overlay", "run-overlay -f n") == ["notes.txt"])

        // --uninstall removes exactly that: their file stays, every directory the install made goes.
        let root = try #require(repositoryRoot)
        let removed = try run([root + "/Scripts/install", "--prefix", prefix, "--uninstall"],
                              environment: ["PATH": "/usr/bin:/bin", "HOME": prefix], timeout: 60)
        #expect(removed.status == 0, "\(removed)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: prefix).sorted() == ["bin"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: prefix + "/bin") == ["theirs"])
        // Twice: nothing left to remove is said in one line.
        let again = try run([root + "/Scripts/install", "--prefix", prefix, "--uninstall"],
                            environment: ["PATH": "/usr/bin:/bin", "HOME": prefix], timeout: 60)
        #expect(again.status != 0 && again.stderr.hasPrefix("error: nothing installed under ") && again.stderr.split(separator: "\n").count == 1, "\(again)")
    }
}
