import LinuxSupport

/// A snapshot operation refused or failed: one line naming the thing and what to do.
public struct SnapshotError: UserFacingError, Equatable, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
