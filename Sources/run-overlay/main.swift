import OverlayCommands

runNativeSetupIfRequested()

RunOverlay.main()
