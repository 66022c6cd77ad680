import OverlayCommands

OneLineErrors.main(RunOverlay.self)
