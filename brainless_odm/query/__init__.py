"""The query layer: lookups, ``Q``, ``QuerySet`` and ``Manager``. Pure: it touches no storage."""
