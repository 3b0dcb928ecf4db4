"""MCP bridge: MCP servers as Synq agents (the adapter), and the translation the relay's MCP
faces share (SPEC.md "MCP mapping")."""

from adapters.mcp.adapter import McpAdapter

__all__ = ["McpAdapter"]
