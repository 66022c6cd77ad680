import OverlayCommands

CreateOverlay.main()
