import OverlayCommands

MountOverlay.main()
