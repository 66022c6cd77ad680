import OverlayCommands

OneLineErrors.main(OverlayTool.self)
