"""Dataset recipes: a folder of raw videos to the ``path label`` lists that ``mvmae check`` and
``mvmae extract run`` read, split the way a published benchmark splits them.

``lists`` writes and counts lists (the one output format), ``uavhuman`` builds UAV-Human's
cross-subject splits from its file names, ``kinetics`` the Kinetics splits from an annotation CSV,
``folders`` a seeded stratified train/val split of class subfolders. These modules come before
extraction in the data flow: they import nothing from the stages after them, and no torch.
"""
