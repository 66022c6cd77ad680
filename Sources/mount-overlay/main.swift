import OverlayCommands

OneLineErrors.main(MountOverlay.self)
