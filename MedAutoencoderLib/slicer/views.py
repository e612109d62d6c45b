"""The result layout: input, reconstruction and input with the anomaly overlay side by side, linked, over a 3D view.

The layout is a Slicer layout description registered on the scene's layout node; the slice views it creates are
configured through their slice composite nodes (MRML), so all of it but the view creation itself runs, and is
tested, on the ``slicer-core`` wheel. Linked control keeps the three views on the same slice and zoom (Slicer's
slice link logic broadcasts a linked view's offset and field of view to the views of its view group).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from MedAutoencoderLib.errors import MedAutoencoderError
from MedAutoencoderLib.slicer import bridge

#: Layout ID of the result layout (Slicer's own layouts use IDs under 1000; extensions pick large numbers).
LAYOUT_ID = 51523
#: The three slice views (their slice node layout names) and what each shows.
INPUT_VIEW = "MedAutoencoderInput"
RECONSTRUCTION_VIEW = "MedAutoencoderReconstruction"
OVERLAY_VIEW = "MedAutoencoderOverlay"
VIEW_NAMES = (INPUT_VIEW, RECONSTRUCTION_VIEW, OVERLAY_VIEW)
_VIEW_LABELS = {INPUT_VIEW: ("In", "#F34A33"), RECONSTRUCTION_VIEW: ("Rec", "#6EB04B"),
                OVERLAY_VIEW: ("Map", "#EDD54C")}
DEFAULT_OVERLAY_OPACITY = 0.4


def layout_description(orientation: str = "Axial") -> str:
    """Slicer layout XML: the three slice views in a row above the 3D view."""
    views = "".join(
        f'<item><view class="vtkMRMLSliceNode" singletontag="{name}">'
        f'<property name="orientation" action="default">{orientation}</property>'
        f'<property name="viewlabel" action="default">{_VIEW_LABELS[name][0]}</property>'
        f'<property name="viewcolor" action="default">{_VIEW_LABELS[name][1]}</property>'
        '<property name="viewgroup" action="default">0</property>'
        '</view></item>' for name in VIEW_NAMES)
    return ('<layout type="vertical" split="true">'
            f'<item splitSize="600"><layout type="horizontal">{views}</layout></item>'
            '<item splitSize="400"><view class="vtkMRMLViewNode" singletontag="1">'
            '<property name="viewlabel" action="default">1</property></view></item>'
            '</layout>')


def layout_node(scene):
    """The scene's layout node (Slicer's application makes it; a bare scene has none)."""
    node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if node is None:
        raise MedAutoencoderError("The scene has no layout node (no Slicer views to arrange).")
    return node


def show_result_layout(scene) -> Optional[int]:
    """Switch to the result layout (registered once) and return the layout that was shown before it.

    Returns:
        The previous view arrangement, to give to :func:`restore_layout`; None when the result layout was already
        shown (the user's layout recorded the first time must then be kept).
    """
    node = layout_node(scene)
    if not node.IsLayoutDescription(LAYOUT_ID):
        node.AddLayoutDescription(LAYOUT_ID, layout_description())
    previous = node.GetViewArrangement()
    node.SetViewArrangement(LAYOUT_ID)
    return previous if previous != LAYOUT_ID else None


def restore_layout(scene, previous: Optional[int]) -> None:
    """Show the layout the user had before :func:`show_result_layout` (conventional when unknown)."""
    node = layout_node(scene)
    node.SetViewArrangement(int(previous) if previous else node.SlicerLayoutConventionalView)


def result_composite_nodes(scene) -> Dict[str, Any]:
    """The slice composite nodes of the result layout's views, by view name (those that exist)."""
    nodes = {}
    for composite in scene.GetNodesByClass("vtkMRMLSliceCompositeNode"):
        if composite.GetLayoutName() in VIEW_NAMES:
            nodes[composite.GetLayoutName()] = composite
    return nodes


def configure_result_views(scene, input_node, nodes: Mapping[str, Any],
                           opacity: float = DEFAULT_OVERLAY_OPACITY) -> Dict[str, Any]:
    """Put the input, the reconstruction and the input under the anomaly map into the three views, link them,
    and show the segmentation in 3D (with its outline in the slice views).

    Args:
        scene: the MRML scene.
        input_node: the input volume.
        nodes: the result's nodes by role (``reconstruction``, ``anomaly_map``, optional ``anomaly_segmentation``).
        opacity: the anomaly map's opacity over the input.

    Returns:
        The composite nodes configured, by view name.

    Raises:
        MedAutoencoderError: the result layout's views do not exist (the layout is not shown).
    """
    composites = result_composite_nodes(scene)
    if set(composites) != set(VIEW_NAMES):
        raise MedAutoencoderError("The result layout's views are not shown; call show_result_layout first.")
    layers = {
        INPUT_VIEW: (input_node, None),
        RECONSTRUCTION_VIEW: (nodes.get(bridge.ROLE_RECONSTRUCTION), None),
        OVERLAY_VIEW: (input_node, nodes.get(bridge.ROLE_ANOMALY_MAP)),
    }
    for name, (background, foreground) in layers.items():
        composite = composites[name]
        was_modifying = composite.StartModify()
        composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(opacity if foreground is not None else 0.0)
        composite.SetLabelVolumeID(None)
        composite.SetLinkedControl(True)
        composite.EndModify(was_modifying)
    segmentation = nodes.get(bridge.ROLE_ANOMALY_SEGMENTATION)
    if segmentation is not None:
        show_segmentation_in_3d(segmentation)
    return composites


def show_segmentation_in_3d(segmentation_node) -> None:
    """A closed surface of the anomaly segmentation, shown in 3D (outline stays in the slice views)."""
    segmentation_node.CreateClosedSurfaceRepresentation()
    display = segmentation_node.GetDisplayNode()
    if display is not None:
        display.SetVisibility3D(True)


def set_overlay_opacity(scene, map_node, opacity: float) -> int:
    """Set the anomaly map's opacity in every slice view that shows it over another volume.

    Returns:
        How many views were changed.
    """
    changed = 0
    for composite in scene.GetNodesByClass("vtkMRMLSliceCompositeNode"):
        if map_node is not None and composite.GetForegroundVolumeID() == map_node.GetID():
            composite.SetForegroundOpacity(float(min(max(opacity, 0.0), 1.0)))
            changed += 1
    return changed
