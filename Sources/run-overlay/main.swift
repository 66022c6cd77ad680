import OverlayCommands

OneLineErrors.main(RunOverlay.self, holdingUserSignals: true)
