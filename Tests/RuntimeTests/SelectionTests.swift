import Testing
@testable import Runtime

@Suite struct SelectionTests {
    @Test func nativeIsAvailableEverywhere() throws {
        #expect(try RuntimeSelection.make(.native).name == "native")
    }
}
