import Ext3
import LinuxSupport
import Pack
#if canImport(Glibc)
import Glibc
#endif

/// `overlay snapshot create --git`: the working tree as it is now (committed, staged, unstaged
/// and untracked-but-not-ignored files) recorded as a commit on a new branch, built with a
/// temporary index, so the work tree, the index, HEAD and the stash are never touched; the
/// snapshot holds exactly that commit's tree at the repository's absolute path.
public struct GitSnapshot: Sendable {
    public var directory: String
    /// The branch (and snapshot) name; nil: `<prefix><UTC YYYYmmdd-HHMMSS>`, with `-2`, `-3`...
    /// when taken.
    public var branch: String?
    public var prefix: String
    public var push: Bool

    public static let defaultPrefix = "slurm-job-"

    public init(directory: String, branch: String?, prefix: String = GitSnapshot.defaultPrefix, push: Bool) {
        self.directory = directory
        self.branch = branch
        self.prefix = prefix
        self.push = push
    }

    /// A snapshot name for a branch: `/` becomes `-`.
    public static func snapshotName(forBranch branch: String) -> String {
        branch.replacingSlashes()
    }

    /// Records the tree, makes the branch and the snapshot; on failure removes the branch again.
    public func capture(store: SnapshotStore, owner: Ext3.Owner, imageOwner: Ext3.Owner?, stamp: String,
                        created: String, host: String, user: String) throws -> SnapshotDescription {
        var git = try Git(directory: directory)
        let inside = try git.run(["rev-parse", "--show-toplevel"])
        guard inside.status == 0 else {
            throw SnapshotError("--git: \(directory) is not inside a git repository: run it in one, or leave out --git")
        }
        let top = inside.output.trimmedLine()
        git = try Git(directory: top)
        let gitDirectory = try git.value(["rev-parse", "--absolute-git-dir"], "--git")
        if let branch {
            let check = try git.run(["check-ref-format", "--branch", branch])
            guard check.status == 0 else { throw SnapshotError("--git \(branch): not a usable branch name (\(check.firstError))") }
            try SnapshotStore.validate(name: GitSnapshot.snapshotName(forBranch: branch))
        } else {
            let check = try git.run(["check-ref-format", "--branch", prefix + stamp])
            guard check.status == 0 else { throw SnapshotError("--branch-prefix \(prefix): makes no usable branch name (\(check.firstError))") }
        }
        try store.create()

        // The temporary index: a copy of the repository's (so unchanged files are not hashed
        // again), in a file of our own that is removed whatever happens.
        let commit = try record(git, gitDirectory: gitDirectory)

        // The branch: created only if it does not exist (update-ref with an empty old value),
        // so two snapshots in one second get two names.
        var attempt = 1
        var chosen: String
        while true {
            let base = branch ?? (prefix + stamp)
            chosen = attempt == 1 ? base : "\(base)-\(attempt)"
            let snapshotName = GitSnapshot.snapshotName(forBranch: chosen)
            var info = stat()
            let fileTaken = lstat(store.path(of: snapshotName), &info) == 0
            if !fileTaken {
                let made = try git.run(["update-ref", "-m", "overlay snapshot", "refs/heads/" + chosen, commit, ""])
                if made.status == 0 { break }
                let exists = try git.run(["show-ref", "--verify", "--quiet", "refs/heads/" + chosen]).status == 0
                if !exists { throw SnapshotError("--git: cannot create the branch \(chosen): \(made.firstError)") }
            }
            if branch != nil {
                throw SnapshotError(fileTaken ? "snapshot '\(snapshotName)' exists already in \(store.directory): choose another name"
                                    : "--git \(chosen): the branch exists already: choose another name, or leave the name out for a new one")
            }
            attempt += 1
            guard attempt < 10000 else { throw SnapshotError("--git: no free branch name from \(base)") }
        }
        do {
            let name = GitSnapshot.snapshotName(forBranch: chosen)
            let capture = try SnapshotCapture(store: store, name: name, owner: owner, imageOwner: imageOwner)
            var source = try archive(git, commit: commit, in: store.directory)
            source.source.giveAll(to: owner)
            try source.source.placeAsCaptured(at: top, owner: owner, hostMetadata: true)
            let record = SnapshotDescription.GitRecord(repository: top, commit: commit, branch: chosen, pushed: push)
            let description = try capture.write(source.source, captured: [SnapshotDescription.Captured(path: top, kind: "git")],
                                                git: record, created: created, host: host, user: user)
            close(source.descriptor)
            if push {
                do {
                    try pushBranch(git, chosen)
                } catch {
                    unlink(capture.target)
                    throw error
                }
            }
            return description
        } catch {
            _ = try? git.run(["update-ref", "-d", "refs/heads/" + chosen, commit])
            throw error
        }
    }

    /// `git add -A` into a temporary index, `git write-tree`, `git commit-tree -p HEAD`.
    func record(_ git: Git, gitDirectory: String) throws -> String {
        var template = Array("/tmp/overlay-snapshot-index-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw SnapshotError("--git: cannot make a temporary index in /tmp: \(Errno.last)") }
        let indexPath = String(cString: template)
        let slot = TemporaryFiles.register(indexPath)
        defer {
            unlink(indexPath)
            unlink(indexPath + ".lock")
            TemporaryFiles.unregister(slot)
        }
        let existing = open(gitDirectory + "/index", O_RDONLY | O_CLOEXEC)
        if existing >= 0 {
            var offset: Int64 = 0
            var outOffset: Int64 = 0
            while FileCalls.copyFileRange(existing, &offset, fd, &outOffset, 1 << 30) > 0 {}
            close(existing)
        } else {
            unlink(indexPath)  // no index yet (nothing ever added): git starts a fresh one there
        }
        close(fd)
        var indexed = git
        indexed.environment["GIT_INDEX_FILE"] = indexPath
        let added = try indexed.run(["add", "-A", "--", "."])
        guard added.status == 0 else { throw SnapshotError("--git: cannot record the working tree: git add: \(added.firstError)") }
        let tree = try indexed.value(["write-tree"], "--git: cannot record the working tree")
        var arguments = ["commit-tree", tree, "-m", "Snapshot of the working tree (overlay snapshot create --git)"]
        if try git.run(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"]).status == 0 {
            arguments += ["-p", "HEAD"]
        }
        var committing = git
        if try git.run(["config", "user.email"]).status != 0 || git.run(["config", "user.name"]).status != 0 {
            let user = currentEnvironment()["USER"] ?? "user"
            for role in ["AUTHOR", "COMMITTER"] {
                committing.environment["GIT_\(role)_NAME"] = currentEnvironment()["GIT_\(role)_NAME"] ?? user
                committing.environment["GIT_\(role)_EMAIL"] = currentEnvironment()["GIT_\(role)_EMAIL"] ?? "\(user)@localhost"
            }
        }
        return try committing.value(arguments, "--git: cannot record the working tree")
    }

    /// The commit's tree as a tar archive (`git archive`) in an unnamed file in `directory`,
    /// read for packing. The descriptor must stay open until the pack is written.
    func archive(_ git: Git, commit: String, in directory: String) throws -> (source: Ext3.PackSource, descriptor: Int32) {
        let fd = FileCalls.openUnnamed(in: directory, mode: 0o600)
        guard fd >= 0 else { throw SnapshotError("--git: cannot make a temporary file in \(directory): \(Errno.last)") }
        do {
            let result = try git.run(["-c", "tar.umask=user", "archive", "--format=tar", commit], stdout: fd)
            guard result.status == 0 else { throw SnapshotError("--git: git archive: \(result.firstError)") }
            return (try Ext3.PackSource(path: "/proc/self/fd/\(fd)"), fd)
        } catch {
            close(fd)
            throw error
        }
    }

    /// Pushes the branch to the current branch's remote, else `origin`.
    func pushBranch(_ git: Git, _ branch: String) throws {
        var remote = "origin"
        if let current = try? git.value(["symbolic-ref", "--quiet", "--short", "HEAD"], ""),
           let configured = try? git.value(["config", "branch.\(current).remote"], ""), !configured.isEmpty {
            remote = configured
        }
        let pushed = try git.run(["push", "--quiet", remote, "refs/heads/\(branch):refs/heads/\(branch)"])
        guard pushed.status == 0 else {
            throw SnapshotError("--push: cannot push \(branch) to \(remote): \(pushed.firstError) (no snapshot or branch was kept)")
        }
    }
}

extension String {
    func replacingSlashes() -> String { String(map { $0 == "/" ? "-" : $0 }) }
}

extension GitSnapshot {
    /// The top level of the git work tree holding `directory`, or nil (not in one, or no git).
    public static func topLevel(of directory: String) -> String? {
        guard let git = try? Git(directory: directory), let result = try? git.run(["rev-parse", "--show-toplevel"]),
              result.status == 0 else { return nil }
        let top = result.output.trimmedLine()
        return top.isEmpty ? nil : top
    }
}
