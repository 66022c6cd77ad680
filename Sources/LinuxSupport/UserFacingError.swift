/// An error a user sees as one line: its `description` names the thing it is about and says
/// what to do. The executables' one-line main recognises these by type and prints the
/// description alone, exiting with ``exitStatus``.
public protocol UserFacingError: Error, CustomStringConvertible {
    /// The status the executable exits with: 1 for a failure, 64 (EX_USAGE) for a bad command line.
    var exitStatus: Int32 { get }
}

extension UserFacingError {
    public var exitStatus: Int32 { 1 }
}

extension SystemError: UserFacingError {}
