"""The package's front door: `import jwtmcp` stays light, and help(jwtmcp) shows the whole API."""

from __future__ import annotations

import pydoc
import re
import subprocess
import sys

import jwtmcp

MCP_CLASSES = ("JwtAuthMiddleware", "JwtTokenVerifier", "ProtectedMCPServer", "ToolScopeGuard")
MCP_FUNCTIONS = ("current_caller", "get_caller", "protected_server")


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_import_jwtmcp_does_not_import_the_mcp_sdk() -> None:
    # The command line and the issuer rely on this for their start-up time.
    assert _python("import sys, jwtmcp; print('mcp' in sys.modules)") == "False"


def test_dir_lists_the_mcp_names_without_importing_the_mcp_sdk() -> None:
    out = _python(
        "import sys, jwtmcp; names = dir(jwtmcp); "
        f"print(all(n in names for n in {MCP_CLASSES + MCP_FUNCTIONS!r}), 'mcp' in sys.modules)"
    )
    assert out == "True False"


def test_help_documents_the_mcp_classes_and_functions() -> None:
    text = pydoc.render_doc(jwtmcp, renderer=pydoc.plaintext)
    for name in MCP_CLASSES:
        assert re.search(rf"^\s*class {name}\b", text, re.M), name
    for name in MCP_FUNCTIONS:
        assert re.search(rf"^\s*{name}\(", text, re.M), name


def test_module_docstring_names_every_public_name() -> None:
    doc = jwtmcp.__doc__ or ""
    missing = [n for n in jwtmcp.__all__ if not re.search(rf"\b{n}\b", doc)]
    assert missing == []
