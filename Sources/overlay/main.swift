import OverlayCommands

OverlayTool.main()
