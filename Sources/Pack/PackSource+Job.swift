import Ext3

extension Ext3.PackSource {
    /// Reads the directory `path` on this thread alone: for a process that cannot use a
    /// thread pool (a fork of a process that had one, such as the native runtime's setup).
    public init(directoryOnThisThread path: String) throws {
        self.path = path
        kind = .directory
        tree = try Ext3.Tree.scan(directory: path, xattrCalls: .relativeWhereAvailable, threads: 1)
        blocksNeeded = tree.blocksNeeded
    }

    /// Keeps only the entries `take` accepts (``Ext3/Tree/pruned(taking:)``: asked about every
    /// entry but directories, with its path below the tree's top; a directory stays when it
    /// leads to a taken entry).
    public mutating func prune(taking take: (String) -> Bool) {
        tree = tree.pruned(taking: take)
        blocksNeeded = tree.blocksNeeded
    }
}
