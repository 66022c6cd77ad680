import OverlayCommands

RunOverlay.main()
