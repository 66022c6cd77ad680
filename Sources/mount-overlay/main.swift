import OverlayCommands

OneLineErrors.main(MountOverlay.self, holdingUserSignals: true)
