"""Result storage and rendering: terminal tables, meta.json, later HTML, diff and JUnit."""
