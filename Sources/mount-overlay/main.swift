import OverlayCommands

runNativeSetupIfRequested()

MountOverlay.main()
